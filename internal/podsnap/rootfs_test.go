package podsnap

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
)

// ctrSpec is the spec of a container run with ctr (no CRI annotations) in namespace
// default: a sandbox of one container, recorded as "main".
func ctrSpec() *specs.Spec {
	return &specs.Spec{
		Process:     &specs.Process{Cwd: "/"},
		Root:        &specs.Root{Path: "rootfs"},
		Annotations: map[string]string{oci.SandboxNamespaceAnnotation: "default"},
	}
}

// newRootfsEnv is newEnv with the policy's snapshotScope rootfs-only.
func newRootfsEnv(t *testing.T, trigger, post string) *env {
	t.Helper()
	e := newEnv(t, trigger, post)
	p := filepath.Join(e.cfg.PolicyDir, "p.yaml")
	b, err := os.ReadFile(p)
	must(t, err)
	must(t, os.WriteFile(p, []byte(strings.Replace(string(b), "  triggerConfig:", "  snapshotScope: rootfs-only\n  triggerConfig:", 1)), 0o600))
	return e
}

// A workload trigger of a rootfs-only pod of two containers: gVisor's memory image is
// discarded, each container's layer is saved with the sandbox frozen, the sandbox runs
// on; a second pod's containers are created naming their layers and find them linked at
// start, and nothing restores memory.
func TestRootfsOnlyWorkloadTriggerThenStart(t *testing.T) {
	e := newRootfsEnv(t, "workload", "stop")
	pd := createPod(t, e, "first")
	for _, name := range []string{"writer", "server"} {
		c, _ := pd.join(name, "/bin/"+name)
		must(t, pd.p.Start(context.Background(), c))
	}
	if pd.sb.annots[annCheckpointResume] != "true" {
		t.Fatalf("resume annotation %q: gVisor's save must leave the sandbox running to read its files", pd.sb.annots[annCheckpointResume])
	}
	pd.sb.checkpoints <- nil
	eventually(t, "the commit", func() bool { return len(e.committed()) == 1 })
	m := e.committed()[0]
	var files []string
	for _, f := range m.Files {
		files = append(files, strings.TrimPrefix(f.Name, m.Dir()+"/"))
	}
	if m.Scope != manifest.ScopeRootfsOnly || strings.Join(files, ",") != "rootfs-server.tar,rootfs-writer.tar" {
		t.Fatalf("scope %q files %v: want two layers and no memory image", m.Scope, files)
	}
	if got := pd.sb.callLog(); !strings.Contains(got, "freeze, thaw, kill 9") {
		t.Fatalf("sandbox calls %q: want it frozen, then resumed and killed (postCheckpoint: stop)", got)
	}
	if got := pd.p.SandboxExited(137); got != 0 {
		t.Fatalf("exit status after a committed stop = %d, want 0", got)
	}

	p2, sb2 := e.plan("second", "pod-second")
	if p2.Restores() || p2.restore == nil || !p2.restore.RootfsOnly() {
		t.Fatal("the second pod does not start on the layers")
	}
	must(t, p2.Start(context.Background(), sb2))
	if got := sb2.callLog(); got != "start" {
		t.Fatalf("pause container calls %q, want a plain start", got)
	}
	pd2 := &pod{p: p2, sb: sb2, members: map[string]*fakeTask{}}
	c, deferred := pd2.join("writer", "/bin/writer")
	if deferred {
		t.Fatal("a container of a rootfs-only restore waits")
	}
	want := p2.layerPath("writer")
	if got := c.annots[AnnRootfsUpperTar+".writer"]; got != want {
		t.Fatalf("layer annotation %q, want %q", got, want)
	}
	must(t, p2.Start(context.Background(), c))
	b, err := os.ReadFile(want)
	must(t, err)
	if string(b) != "layer of first-writer" {
		t.Fatalf("layer at start holds %q", b)
	}
	// A container the snapshot has no layer for starts on its image.
	other, _ := pd2.join("other", "/bin/other")
	if _, ok := other.annots[AnnRootfsUpperTar+".other"]; ok {
		t.Fatal("a container without a layer was given one")
	}
}

// The manual trigger saves the layers of a pod of one container (ctr) and resumes it;
// the same spec then starts on its layer from the node cache, named at Plan.
func TestRootfsOnlyManualOfOneContainer(t *testing.T) {
	e := newRootfsEnv(t, "manual", "resume")
	sb := newFakeTask("one")
	spec := ctrSpec()
	p := e.node.Plan(context.Background(), Sandbox{Task: sb, Spec: spec, Config: e.cfg})
	t.Cleanup(p.commits.Wait)
	t.Cleanup(p.touches.Wait)
	must(t, p.Start(context.Background(), sb))
	m, err := p.Checkpoint(context.Background())
	must(t, err)
	if got := sb.callLog(); !strings.HasSuffix(got, "freeze, tar, thaw") {
		t.Fatalf("calls %q: want freeze, tar, thaw", got)
	}
	if len(m.RootfsLayers()) != 1 || m.RootfsLayers()["main"].Name == "" {
		t.Fatalf("layers %v", m.RootfsLayers())
	}
	// First restore downloads: Plan waits for the layer (layerPlanWait) and names it.
	sb2 := newFakeTask("two")
	p2 := e.node.Plan(context.Background(), Sandbox{Task: sb2, Spec: spec, Config: e.cfg})
	t.Cleanup(p2.touches.Wait)
	if got := sb2.annots[AnnRootfsUpperTar]; !p2.layerNamed || !strings.HasPrefix(got, e.cfg.Cache()) || !strings.HasSuffix(got, "rootfs-main.tar") {
		t.Fatalf("annotations %v, want the downloaded layer in the node cache", sb2.annots)
	}
	must(t, p2.Start(context.Background(), sb2))
	if got := sb2.callLog(); got != "writespec, start" {
		t.Fatalf("calls %q", got)
	}
	// Next: from the node cache, named at Plan.
	sb3 := newFakeTask("three")
	p3 := e.node.Plan(context.Background(), Sandbox{Task: sb3, Spec: spec, Config: e.cfg})
	t.Cleanup(p3.touches.Wait)
	must(t, p3.Start(context.Background(), sb3))
	if got := sb3.callLog(); got != "writespec, start" {
		t.Fatalf("calls %q", got)
	}
}

// A corrupt layer is a cold start on the empty placeholder runsc opened at create: the
// sandbox is not made again (a manual policy needs no annotations), and the snapshot is
// marked Failed.
func TestRootfsOnlyCorruptLayerStartsCold(t *testing.T) {
	e := newRootfsEnv(t, "manual", "resume")
	spec := ctrSpec()
	sb := newFakeTask("one")
	p := e.node.Plan(context.Background(), Sandbox{Task: sb, Spec: spec, Config: e.cfg})
	t.Cleanup(p.commits.Wait)
	must(t, p.Start(context.Background(), sb))
	m, err := p.Checkpoint(context.Background())
	must(t, err)
	obj := filepath.Join(e.store, m.Files[0].Name)
	data, err := os.ReadFile(obj)
	must(t, err)
	data[len(data)/2] ^= 0xff
	must(t, os.WriteFile(obj, data, 0o600))

	sb2 := newFakeTask("two")
	p2 := e.node.Plan(context.Background(), Sandbox{Task: sb2, Spec: spec, Config: e.cfg})
	must(t, p2.Start(context.Background(), sb2))
	if got := sb2.callLog(); got != "writespec, start" {
		t.Fatalf("calls %q, want a plain start on the placeholder", got)
	}
	if fi, err := os.Stat(p2.layerPath("main")); err != nil || fi.Size() != 0 {
		t.Fatalf("placeholder after a failed download: %v, %v", fi, err)
	}
	got, err := e.repo().Get(context.Background(), "default", "my-app", m.UUID)
	must(t, err)
	if got.State != manifest.StateFailed {
		t.Fatalf("corrupt snapshot state = %s, want Failed", got.State)
	}
}

// copyInto writes over the placeholder runsc holds open: the open file reads the layer.
func TestCopyIntoKeepsTheOpenFile(t *testing.T) {
	dir := t.TempDir()
	dst, src := filepath.Join(dir, "placeholder"), filepath.Join(dir, "layer")
	must(t, os.WriteFile(dst, nil, 0o600))
	must(t, os.WriteFile(src, []byte("the layer"), 0o600))
	held, err := os.Open(dst)
	must(t, err)
	defer held.Close()
	must(t, copyInto(dst, src))
	b := make([]byte, 32)
	n, _ := held.Read(b)
	if string(b[:n]) != "the layer" {
		t.Fatalf("the open placeholder reads %q", b[:n])
	}
}
