package podsnap

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
)

// pod is a CRI pod under test: its sandbox and containers.
type pod struct {
	p       *Pod
	sb      *fakeTask
	members map[string]*fakeTask
}

// createPod plans sandbox id and starts it; the pod's containers join later.
func createPod(t *testing.T, e *env, id string) *pod {
	t.Helper()
	p, sb := e.plan(id, "pod-"+id)
	if p == nil {
		t.Fatal("no lifecycle for the pod")
	}
	must(t, p.Start(context.Background(), sb))
	return &pod{p: p, sb: sb, members: map[string]*fakeTask{}}
}

// join creates container name (args) in the pod and reports whether it waits for the
// restore.
func (pd *pod) join(name string, args ...string) (*fakeTask, bool) {
	c := newFakeTask(pd.sb.id + "-" + name)
	c.created = false
	pd.members[name] = c
	deferred := pd.p.Join(context.Background(), c, containerSpec(name, args...))
	if !deferred {
		c.Create(context.Background())
	}
	return c, deferred
}

// snapshotOfTwo commits a snapshot of a pod with containers writer and server.
func snapshotOfTwo(t *testing.T, e *env) *manifest.Manifest {
	t.Helper()
	pd := createPod(t, e, "first")
	for _, name := range []string{"writer", "server"} {
		c, deferred := pd.join(name, "/bin/"+name)
		if deferred {
			t.Fatalf("%s waits in a pod that was started cold", name)
		}
		if c.annots[annCheckpointEnable] != "true" {
			t.Fatalf("%s cannot trigger the pod's checkpoint: %v", name, c.annots)
		}
		must(t, pd.p.Start(context.Background(), c))
	}
	pd.sb.checkpoints <- nil
	eventually(t, "the commit", func() bool { return len(e.committed()) == 1 })
	m := e.committed()[0]
	if len(m.Containers) != 2 || m.SandboxKey == "" || m.Containers[0].Name != "writer" || len(m.Source.Containers) != 3 {
		t.Fatalf("manifest containers %+v, sandbox key %q, source %+v", m.Containers, m.SandboxKey, m.Source.Containers)
	}
	return m
}

func TestDeferredRestoreOfAPod(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	snapshotOfTwo(t, e)

	pd := createPod(t, e, "second")
	if started, _, _, _ := pd.sb.state(); started != 1 || pd.sb.callLog() != "" {
		t.Fatalf("waiting sandbox: started %d, calls %q; want reported running, nothing run", started, pd.sb.callLog())
	}
	resolved := make(chan error, 1)
	go func() { resolved <- pd.p.AwaitResolved(context.Background(), pd.sb) }()

	w, deferred := pd.join("writer", "/bin/writer")
	if !deferred {
		t.Fatal("writer does not wait for the restore")
	}
	s, deferred := pd.join("server", "/bin/server")
	if !deferred {
		t.Fatal("server does not wait for the restore")
	}
	must(t, pd.p.Start(context.Background(), w))
	if w.callLog() != "" {
		t.Fatalf("writer ran before the pod was complete: %q", w.callLog())
	}
	select {
	case <-resolved:
		t.Fatal("calls waiting for the pod went on before its restore")
	default:
	}
	must(t, pd.p.Start(context.Background(), s))
	// The whole download is a plain directory: read with --direct (restore_direct).
	if pd.sb.callLog() != "restore --direct" || w.callLog() != "create, restore --direct" || s.callLog() != "create, restore --direct" {
		t.Fatalf("restore calls: sandbox %q writer %q server %q", pd.sb.callLog(), w.callLog(), s.callLog())
	}
	for _, c := range []*fakeTask{pd.sb, w, s} {
		if started, watched, _, _ := c.state(); started == 0 || watched != 1 {
			t.Fatalf("%s: started %d watched %d", c.id, started, watched)
		}
	}
	must(t, <-resolved)
	// A restored pod does not checkpoint itself again.
	if _, ok := pd.p.checkpointTarget(); ok {
		t.Fatal("a restored pod may trigger checkpoints")
	}
}

func TestDeferredRestoreFallsBackCold(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	snapshotOfTwo(t, e)

	t.Run("a container differs", func(t *testing.T) {
		pd := createPod(t, e, "differs")
		w, _ := pd.join("writer", "/bin/writer")
		must(t, pd.p.Start(context.Background(), w))
		s, deferred := pd.join("server", "/bin/server", "--other")
		if deferred {
			t.Fatal("a differing server waits for the restore")
		}
		if got := pd.sb.callLog(); got != "destroy, writespec, create, watch, start" {
			t.Fatalf("sandbox calls %q, want a cold re-create", got)
		}
		if got := w.callLog(); got != "writespec, create, start" {
			t.Fatalf("writer calls %q, want created and started cold (its Start came)", got)
		}
		if s.annots[annCheckpointEnable] != "true" {
			t.Fatal("the server of the cold pod cannot trigger checkpoints")
		}
	})

	t.Run("a container never comes", func(t *testing.T) {
		e.cfg.RestoreWaitSeconds = 0.2
		defer func() { e.cfg.RestoreWaitSeconds = 5 }()
		pd := createPod(t, e, "missing")
		w, _ := pd.join("writer", "/bin/writer")
		must(t, pd.p.Start(context.Background(), w))
		must(t, pd.p.AwaitResolved(context.Background(), w))
		if got := pd.sb.callLog(); got != "destroy, writespec, create, watch, start" {
			t.Fatalf("sandbox calls %q after the wait ran out", got)
		}
		if got := w.callLog(); got != "writespec, create, start" {
			t.Fatalf("writer calls %q", got)
		}
	})

	t.Run("a waiting container is killed", func(t *testing.T) {
		pd := createPod(t, e, "killed")
		w, _ := pd.join("writer", "/bin/writer")
		s, _ := pd.join("server", "/bin/server")
		if !pd.p.Kill(context.Background(), w, 9, false) {
			t.Fatal("Kill of a waiting container was left to runsc")
		}
		if _, _, exited, status := w.state(); !exited || status != 137 {
			t.Fatalf("killed writer: exited %v status %d", exited, status)
		}
		if got := s.callLog(); got != "writespec, create" {
			t.Fatalf("server calls %q: created cold, not started (its Start has not come)", got)
		}
		must(t, pd.p.Start(context.Background(), s))
		if got := s.callLog(); got != "writespec, create, start" {
			t.Fatalf("server calls %q after its Start", got)
		}
	})

	t.Run("a waiting container is deleted", func(t *testing.T) {
		pd := createPod(t, e, "deleted")
		w, _ := pd.join("writer", "/bin/writer")
		pd.p.Delete(context.Background(), w)
		if got := pd.sb.callLog(); got != "destroy, writespec, create, watch, start" {
			t.Fatalf("sandbox calls %q", got)
		}
		if pd.p.memberOf(w) != nil {
			t.Fatal("the deleted container is still a member")
		}
	})

	t.Run("the restore fails", func(t *testing.T) {
		pd := createPod(t, e, "fails")
		w, _ := pd.join("writer", "/bin/writer")
		s, _ := pd.join("server", "/bin/server")
		s.fail["restore"] = errors.New("runsc restore: boom")
		must(t, pd.p.Start(context.Background(), w))
		must(t, pd.p.Start(context.Background(), s))
		if got := s.callLog(); got != "create, restore --direct, destroy, writespec, create, start" {
			t.Fatalf("server calls %q", got)
		}
		if got := pd.sb.callLog(); got != "restore --direct, destroy, writespec, create, watch, start" {
			t.Fatalf("sandbox calls %q", got)
		}
	})

	t.Run("the sandbox is killed", func(t *testing.T) {
		pd := createPod(t, e, "abandoned")
		w, _ := pd.join("writer", "/bin/writer")
		if !pd.p.Kill(context.Background(), pd.sb, 15, true) {
			t.Fatal("Kill of the waiting sandbox was left to runsc")
		}
		if _, _, exited, status := w.state(); !exited || status != 128+15 {
			t.Fatalf("arrived writer: exited %v status %d", exited, status)
		}
		if got := pd.sb.callLog(); got != "kill 15" || pd.p.Restores() {
			t.Fatalf("sandbox calls %q, restores %v", got, pd.p.Restores())
		}
		// A container arriving after the abandon is created as usual.
		if _, deferred := pd.join("server", "/bin/server"); deferred {
			t.Fatal("a container waits for an abandoned restore")
		}
	})
}

func TestDeferredMismatch(t *testing.T) {
	k1, k2 := strings.Repeat("1", 64), strings.Repeat("2", 64)
	d := &deferredRestore{recorded: []manifest.ContainerKey{{Name: "writer", Key: k1}, {Name: "server", Key: k2}}}
	writer := &member{t: newFakeTask("w"), name: "writer", key: k1}
	for _, tc := range []struct {
		m    *member
		want string
	}{
		{writer, ""},
		{&member{name: "server", key: k1}, "container server differs from the one in the snapshot"},
		{&member{name: "sidecar", key: k1}, "container sidecar is not in the snapshot (it has server, writer)"},
		{&member{name: "writer", keyErr: errors.New("test error")}, "container writer cannot be compared with the snapshot: test error"},
	} {
		if got := d.mismatch(tc.m); !strings.Contains(got, tc.want) || (tc.want == "") != (got == "") {
			t.Errorf("mismatch(%s) = %q, want %q", tc.m.name, got, tc.want)
		}
	}
	d.arrived = append(d.arrived, writer)
	if got := d.mismatch(&member{name: "writer", key: k1}); got != "container writer arrived twice" {
		t.Errorf("second writer: %q", got)
	}
}

func TestAwaitResolvedGivesUp(t *testing.T) {
	p := &Pod{}
	p.deferred.Store(&deferredRestore{resolved: make(chan struct{})})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := p.AwaitResolved(ctx, newFakeTask("c")); err == nil || !strings.Contains(err.Error(), "waits for its pod's restore") {
		t.Fatalf("AwaitResolved = %v", err)
	}
}

// TestContainerNamedMain: a pod whose only container is named "main" (the kubelet's
// everyday case) commits: the sandbox's own name in the key ("POD") does not collide
// with it. It failed with `snapkey: two containers named "main"` before.
func TestContainerNamedMain(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	pd := createPod(t, e, "k8s")
	c, _ := pd.join("main", "/bin/counter")
	must(t, pd.p.Start(context.Background(), c))
	pd.sb.checkpoints <- nil
	eventually(t, "the commit", func() bool { return len(e.committed()) == 1 })
	if m := e.committed()[0]; len(m.Containers) != 1 || m.Containers[0].Name != "main" {
		t.Fatalf("manifest containers %+v", m.Containers)
	}
}
