package podsnap

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
)

// checkpointWorkload cold-starts a pod under the workload policy, lets its workload
// trigger a checkpoint and waits for the commit. It returns the committed snapshot.
func checkpointWorkload(t *testing.T, e *env, id string) *manifest.Manifest {
	t.Helper()
	p, sb := e.plan(id, "pod-"+id)
	if p == nil || p.Restores() {
		t.Fatalf("plan of %s: want a cold start under the policy, got %+v", id, p)
	}
	if sb.annots[annCheckpointEnable] != "true" || sb.annots[annCheckpointResume] != "true" ||
		sb.annots[annCheckpointCompression] != "none" || !strings.HasPrefix(sb.annots[annCheckpointPath], e.cfg.WorkDir) {
		t.Fatalf("workload trigger annotations = %v", sb.annots)
	}
	must(t, p.Start(context.Background(), sb))
	if got := sb.callLog(); got != "writespec, watch, start" {
		t.Fatalf("calls = %q, want the checkpoint watch armed, then a plain start", got)
	}
	before := len(e.committed())
	sb.checkpoints <- nil // the workload writes 1 to /proc/gvisor/checkpoint
	eventually(t, "the commit", func() bool { return len(e.committed()) > before })
	ms := e.committed()
	return ms[len(ms)-1]
}

func TestNoPolicyIsPlainRunsc(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	e.labels = map[string]string{"app": "other"}
	p, sb := e.plan("sb1", "pod")
	if p != nil {
		t.Fatal("a pod no policy matches got a lifecycle")
	}
	must(t, p.Start(context.Background(), sb))
	if started, watched, _, _ := sb.state(); started != 1 || watched != 1 || sb.callLog() != "start" {
		t.Fatalf("nil pod start: calls %q, started %d watched %d", sb.callLog(), started, watched)
	}
	// Every hook of a nil pod is a no-op.
	if p.Join(context.Background(), newFakeTask("c"), containerSpec("c")) || p.Kill(context.Background(), sb, 9, true) ||
		p.StoppedByCheckpoint(sb) || p.SandboxExited(3) != 3 || p.Restores() || p.AwaitResolved(context.Background(), sb) != nil {
		t.Fatal("nil pod hooks must do nothing")
	}
	p.Leave(sb)
	p.Delete(context.Background(), sb)

	// A namespace without any policy does not even ask containerd for labels.
	e.lookups = 0
	spec := sandboxSpec("pod")
	spec.Annotations["io.kubernetes.cri.sandbox-namespace"] = "elsewhere"
	if e.node.Plan(context.Background(), Sandbox{Task: newFakeTask("x"), Spec: spec, Config: e.cfg}) != nil || e.lookups != 0 {
		t.Fatalf("namespace without policies: lookups %d", e.lookups)
	}
}

func TestWorkloadCheckpointThenRestore(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	m := checkpointWorkload(t, e, "sb1")
	if m.Source.Pod != "pod-sb1" || m.Source.Node != "node-1" || len(m.Files) != 3 || m.Namespace != "default" || m.Policy != "my-app" {
		t.Fatalf("manifest = %+v", m)
	}
	// The checkpoint dir is removed once the manifest is stored.
	eventually(t, "the image removed", func() bool {
		_, err := os.Stat(filepath.Join(e.cfg.WorkDir, "k8s.io", "sb1", "checkpoint", "pages.img"))
		return os.IsNotExist(err)
	})

	// A pod with the same spec restores: the download runs in the background, Start
	// waits for it and restores from the node cache.
	p2, sb2 := e.plan("sb2", "pod-sb2")
	if !p2.Restores() {
		t.Fatal("second pod does not restore")
	}
	if sb2.annots != nil {
		t.Fatalf("a restoring pod got trigger annotations %v", sb2.annots)
	}
	must(t, p2.Start(context.Background(), sb2))
	if got := sb2.callLog(); got != "restore --direct" {
		t.Fatalf("calls = %q, want a restore with --direct (restore_direct)", got)
	}
	if !strings.HasPrefix(sb2.restoredFrom, e.cfg.Cache()) {
		t.Fatalf("restored from %s, want the node cache %s", sb2.restoredFrom, e.cfg.Cache())
	}
	eventually(t, "the access time", func() bool {
		got, err := e.repo().Get(context.Background(), "default", "my-app", m.UUID)
		return err == nil && !got.LastAccessTime.IsZero()
	})

	// A third pod finds it in the node cache at Create.
	p3, sb3 := e.plan("sb3", "pod-sb3")
	if !p3.fetch.cached {
		t.Fatal("third pod missed the node cache")
	}
	must(t, p3.Start(context.Background(), sb3))
	if got := sb3.callLog(); got != "restore --direct" {
		t.Fatalf("calls of a restore from the node cache = %q, want a restore with --direct", got)
	}
	p3.Delete(context.Background(), sb3)
	if _, err := os.Stat(p3.workDir); !os.IsNotExist(err) {
		t.Fatalf("work dir left after Delete: %v", err)
	}
}

func TestFailedRestoreStartsCold(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	checkpointWorkload(t, e, "sb1")
	p, sb := e.plan("sb2", "pod-sb2")
	sb.fail["restore"] = errors.New("runsc restore: boom")
	must(t, p.Start(context.Background(), sb))
	if got := sb.callLog(); got != "restore --direct, destroy, writespec, create, watch, start" {
		t.Fatalf("calls = %q, want restore then a cold re-create", got)
	}
	if p.Restores() {
		t.Fatal("the pod still restores after the cold start")
	}
	if _, ok := p.checkpointTarget(); !ok {
		t.Fatal("a pod started cold under a workload policy may checkpoint")
	}
	// The files that failed are gone from the node cache.
	entries, _ := os.ReadDir(e.cfg.Cache())
	for _, en := range entries {
		if !strings.HasPrefix(en.Name(), ".") {
			t.Fatalf("node cache keeps %s after a failed restore", en.Name())
		}
	}
}

func TestCorruptSnapshotStartsColdAndIsMarkedFailed(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	m := checkpointWorkload(t, e, "sb1")
	obj := filepath.Join(e.store, m.Files[len(m.Files)-1].Name)
	data, err := os.ReadFile(obj)
	must(t, err)
	data[len(data)/2] ^= 0xff
	must(t, os.WriteFile(obj, data, 0o600))

	p, sb := e.plan("sb2", "pod-sb2")
	must(t, p.Start(context.Background(), sb))
	if got := sb.callLog(); got != "destroy, writespec, create, watch, start" {
		t.Fatalf("calls = %q, want a cold re-create with the trigger", got)
	}
	got, err := e.repo().Get(context.Background(), "default", "my-app", m.UUID)
	must(t, err)
	if got.State != manifest.StateFailed {
		t.Fatalf("corrupt snapshot state = %s, want Failed", got.State)
	}
}

func TestPSNameAnnotation(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	m := checkpointWorkload(t, e, "sb1")
	for _, tc := range []struct {
		name     string
		restores bool
	}{{m.UUID, true}, {"00000000-0000-4000-8000-000000000000", false}} {
		spec := sandboxSpec("pod")
		spec.Annotations[PSNameAnnotation] = tc.name
		p := e.node.Plan(context.Background(), Sandbox{Task: newFakeTask("x-" + tc.name), Spec: spec, Config: e.cfg})
		if p.Restores() != tc.restores {
			t.Errorf("ps-name %s: restores = %v, want %v", tc.name, p.Restores(), tc.restores)
		}
		p.Delete(context.Background(), p.sb)
	}
}

func TestManualCheckpointStopMode(t *testing.T) {
	e := newEnv(t, "manual", "stop")
	p, sb := e.plan("sb1", "pod")
	if sb.annots != nil {
		t.Fatalf("a manual policy enabled the workload trigger: %v", sb.annots)
	}
	must(t, p.Start(context.Background(), sb))
	m, err := p.Checkpoint(context.Background())
	must(t, err)
	if !strings.Contains(sb.callLog(), "checkpoint leaveRunning=false") {
		t.Fatalf("calls = %q, want a checkpoint that stops the sandbox", sb.callLog())
	}
	// The sandbox exited after its checkpoint: the task's status is the commit's.
	if got := p.SandboxExited(137); got != 0 {
		t.Fatalf("exit status after a committed stop checkpoint = %d, want 0", got)
	}
	if !p.StoppedByCheckpoint(sb) {
		t.Fatal("StoppedByCheckpoint = false after a stop checkpoint")
	}
	if len(e.committed()) != 1 || e.committed()[0].UUID != m.UUID {
		t.Fatal("manual checkpoint not committed")
	}
}

func TestManualCheckpointFailsAndBusy(t *testing.T) {
	e := newEnv(t, "manual", "resume")
	p, sb := e.plan("sb1", "pod")
	must(t, p.Start(context.Background(), sb))
	sb.fail["checkpoint"] = errors.New("runsc checkpoint: no")
	if _, err := p.Checkpoint(context.Background()); err == nil {
		t.Fatal("a failed runsc checkpoint committed")
	}
	if got := p.SandboxExited(5); got != 5 {
		t.Fatalf("resume-mode exit status changed to %d", got)
	}
	p.busy.Lock()
	if _, err := p.Checkpoint(context.Background()); err == nil || !strings.Contains(err.Error(), "already in progress") {
		t.Fatalf("second checkpoint: %v", err)
	}
	p.busy.Unlock()
}

func TestKillAbandonsStopModeCommit(t *testing.T) {
	e := newEnv(t, "manual", "stop")
	p, sb := e.plan("sb1", "pod")
	must(t, p.Start(context.Background(), sb))
	if p.Kill(context.Background(), sb, 9, true) {
		t.Fatal("Kill of a running sandbox is runsc's to deliver")
	}
	if _, err := p.Checkpoint(context.Background()); !errors.Is(err, errAbandoned) {
		t.Fatalf("checkpoint after kill: %v, want abandoned", err)
	}
	if got := p.SandboxExited(0); got != 137 {
		t.Fatalf("exit status = %d, want 137 (killed)", got)
	}
	if len(e.committed()) != 0 {
		t.Fatal("an abandoned snapshot was committed")
	}
}

func TestFailedWorkloadSaveKeepsWatching(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	p, sb := e.plan("sb1", "pod")
	must(t, p.Start(context.Background(), sb))
	sb.checkpoints <- errors.New("save failed") // the workload reads "error"
	sb.checkpoints <- nil                       // and tries again
	eventually(t, "the second checkpoint's commit", func() bool { return len(e.committed()) == 1 })
	sb.Exit(0)
	p.SandboxExited(0)
	p.Delete(context.Background(), sb)
}

func TestWorkloadStopModeExitWaitsForCommit(t *testing.T) {
	e := newEnv(t, "workload", "stop")
	p, sb := e.plan("sb1", "pod")
	if sb.annots[annCheckpointResume] != "false" {
		t.Fatalf("stop mode: resume annotation %q", sb.annots[annCheckpointResume])
	}
	must(t, p.Start(context.Background(), sb))
	// The save succeeds and the sandbox exits before `runsc wait --checkpoint` answers.
	writeImage(sb.annots[annCheckpointPath], 1<<20)
	sb.Exit(0)
	if got := p.SandboxExited(0); got != 0 {
		t.Fatalf("exit status = %d, want 0 once committed", got)
	}
	if len(e.committed()) != 1 {
		t.Fatal("the stop-mode image saved before the exit was not committed")
	}
}

func TestKillOfUnstartedSandboxCancelsDownload(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	checkpointWorkload(t, e, "sb1")
	e.cfg.CacheMaxBytes = 0 // no node cache: every restore downloads privately
	p, sb := e.plan("sb2", "pod-sb2")
	_, f := p.restoring()
	if f == nil || f.cached {
		t.Fatal("want a download")
	}
	if p.Kill(context.Background(), sb, 9, false) {
		t.Fatal("Kill of a created sandbox is runsc's to deliver")
	}
	sb.Exit(137)
	<-f.done
	if err := p.Start(context.Background(), sb); err == nil || !strings.Contains(err.Error(), "killed while its snapshot downloaded") {
		// A download that finished before the cancel restores; one that was cancelled
		// must not start the killed task.
		if !strings.Contains(sb.callLog(), "restore") {
			t.Fatalf("Start after kill: %v, calls %q", err, sb.callLog())
		}
	}
	p.Delete(context.Background(), sb)
	if entries, _ := os.ReadDir(e.cfg.Cache()); len(entries) != 0 {
		t.Fatalf("private download left in %s: %v", e.cfg.Cache(), entries)
	}
}

func TestAwaitGivesUpWithItsCaller(t *testing.T) {
	f := &fetch{m: &manifest.Manifest{UUID: "u1"}, done: make(chan struct{})}
	dctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go func() {
		defer close(f.done)
		<-dctx.Done()
		f.failed = "download of snapshot ns/u1 failed: " + dctx.Err().Error()
	}()
	ctx, stop := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer stop()
	why, ok := f.await(ctx, "ns", "ns/p")
	if ok || !strings.Contains(why, "gave up waiting for the download of snapshot ns/u1") {
		t.Fatalf("await = %q, %v", why, ok)
	}
	select {
	case <-f.done:
	default:
		t.Fatal("the download still runs after await gave up")
	}
	if why, ok := f.await(context.Background(), "ns", "ns/p"); ok || !strings.Contains(why, "context canceled") {
		t.Fatalf("await after the cancel = %q, %v", why, ok)
	}
	var none *fetch
	none.abort()
	if !none.stop() {
		t.Fatal("no fetch: stop reports it running")
	}
}

// Of the dev.gvisor.* annotations a pod brings (CRI passes them all), only the mount
// hints of its volumes and the emptyDir opt-out stay: every other key, sandbox-level or
// not, is dropped from the spec in memory and in the bundle.
func TestDropPodGVisorAnnotations(t *testing.T) {
	allowed := map[string]string{
		"dev.gvisor.spec.mount.data.type":        "tmpfs",
		"dev.gvisor.spec.mount.data.share":       "pod",
		"dev.gvisor.spec.mount.data.options":     "rw,noexec",
		"dev.gvisor.spec.mount.data.source":      "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/data",
		"dev.gvisor.spec.mount.cache-1.directfs": "off",
		"dev.gvisor.empty-dir.data.force-shared": "true",
		"io.kubernetes.cri.sandbox-id":           "abc",
		"podsnapshot.gke.io/ps-name":             "x",
	}
	refused := map[string]string{
		"dev.gvisor.internal.checkpoint.path":   "/etc",
		"dev.gvisor.internal.checkpoint.enable": "true",
		"dev.gvisor.internal.nvproxy":           "true",
		"dev.gvisor.internal.x":                 "1",
		"dev.gvisor.tar.rootfs.upper":           "/etc/shadow",
		"dev.gvisor.tar.rootfs.upper.main":      "/etc/shadow",
		"dev.gvisor.spec.rootfs.source":         "/dev/sda1",
		"dev.gvisor.spec.rootfs.type":           "erofs",
		"dev.gvisor.spec.rootfs.overlay":        "memory",
		"dev.gvisor.spec.cgroup-parent":         "/",
		"dev.gvisor.flag.debug":                 "true",
		"dev.gvisor.flag.host-uds":              "all",
		"dev.gvisor.bundle.x":                   "y",
		"dev.gvisor.container-name-remap.1":     "a=b",
		"dev.gvisor.spec.mount.data":            "tmpfs",
		"dev.gvisor.spec.mount.data.bogus":      "x",
		"dev.gvisor.spec.mount.a.b.type":        "tmpfs",
		"dev.gvisor.spec.mount..type":           "tmpfs",
		"dev.gvisor.empty-dir.data.other":       "true",
		"dev.gvisor.something":                  "x",
	}
	bundle := t.TempDir()
	spec := &specs.Spec{Version: "1.2.0", Annotations: map[string]string{}}
	maps.Copy(spec.Annotations, allowed)
	maps.Copy(spec.Annotations, refused)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(oci.WriteSpec(bundle, spec))
	dropped, err := DropPodGVisorAnnotations(bundle, spec)
	must(err)
	if want := slices.Sorted(maps.Keys(refused)); !slices.Equal(dropped, want) {
		t.Fatalf("dropped %v, want %v", dropped, want)
	}
	onDisk, err := oci.ReadSpec(bundle)
	must(err)
	for _, s := range []*specs.Spec{spec, onDisk} {
		if !maps.Equal(s.Annotations, allowed) {
			t.Fatalf("annotations left: %v, want %v", s.Annotations, allowed)
		}
	}
	if dropped, err := DropPodGVisorAnnotations(t.TempDir(), onDisk); err != nil || dropped != nil {
		t.Fatalf("nothing to drop: %v, %v", dropped, err)
	}
}

// A failed save frees the disk its partial image held at once (the files stay, emptied,
// for runsc's next save), and a later save is still committed.
func TestFailedSaveEmptiesItsImage(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	p, sb := e.plan("sb1", "pod")
	must(t, p.Start(context.Background(), sb))
	dir, _ := p.checkpointTarget()
	writeImage(dir, 4<<20) // what the failed save wrote before it failed
	sb.checkpoints <- errors.New("no space left on device")
	eventually(t, "the partial image emptied", func() bool {
		fi, err := os.Stat(filepath.Join(dir, "pages.img"))
		return err == nil && fi.Size() == 0
	})
	sb.checkpoints <- nil
	eventually(t, "the next save's commit", func() bool { return len(e.committed()) == 1 })
}

// A checkpoint whose commit fails does not keep its image on the node until the pod goes.
func TestFailedCommitRemovesItsImage(t *testing.T) {
	e := newEnv(t, "manual", "resume")
	p, sb := e.plan("sb1", "pod")
	must(t, p.Start(context.Background(), sb))
	lookup := e.node.Lookup
	e.node.Lookup = func(ctx context.Context, id string) (Record, error) {
		return Record{}, errors.New("containerd is gone")
	}
	if p.Join(context.Background(), newFakeTask("c1"), containerSpec("c1", "/bin/c1")) {
		t.Fatal("a container waits in a pod that does not restore")
	}
	e.node.Lookup = lookup
	if _, err := p.Checkpoint(context.Background()); err == nil || !strings.Contains(err.Error(), "containerd is gone") {
		t.Fatalf("commit of a pod whose container has no key: %v", err)
	}
	entries, _ := os.ReadDir(p.workDir)
	for _, en := range entries {
		if strings.HasPrefix(en.Name(), "manual-") {
			t.Fatalf("the failed checkpoint's image %s is still on the node", en.Name())
		}
	}
}

// A podsnapshot.gke.io annotation other than ps-name (a typo of it, say) is named in a
// warning instead of passing unnoticed.
func TestUnknownAnnotations(t *testing.T) {
	got := unknownAnnotations(map[string]string{
		PSNameAnnotation:               "x",
		"podsnapshot.gke.io/ps_name":   "y",
		"podsnapshot.gke.io/psname":    "z",
		"dev.gvisor.spec.mount.a.type": "bind",
	})
	if want := []string{"podsnapshot.gke.io/ps_name", "podsnapshot.gke.io/psname"}; !slices.Equal(got, want) {
		t.Fatalf("unknownAnnotations = %q, want %q", got, want)
	}
}
