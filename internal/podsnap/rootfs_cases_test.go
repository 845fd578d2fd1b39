package podsnap

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/storage"
)

// restoredPodOfWriter commits a rootfs-only snapshot of a CRI pod with container writer
// (workload trigger, postCheckpoint stop) and returns a second pod, restoring from it
// through the node cache, whose sandbox has started.
func restoredPodOfWriter(t *testing.T, e *env) *pod {
	t.Helper()
	pd := createPod(t, e, "first")
	c, _ := pd.join("writer", "/bin/writer")
	must(t, pd.p.Start(context.Background(), c))
	pd.sb.checkpoints <- nil
	eventually(t, "the commit", func() bool { return len(e.committed()) == 1 })
	if got := pd.p.SandboxExited(137); got != 0 {
		t.Fatalf("exit status of the first pod = %d", got)
	}
	p2, sb2 := e.plan("second", "pod-second")
	if p2 == nil || p2.restore == nil || !p2.restore.RootfsOnly() {
		t.Fatal("the second pod does not start on the layers")
	}
	must(t, p2.Start(context.Background(), sb2))
	return &pod{p: p2, sb: sb2, members: map[string]*fakeTask{}}
}

// A container of a restored pod that restarts (kubelet creates a new container of the
// same name in the same sandbox, the old one exited and not yet deleted) starts on its
// layer again, and the node cache's copy of the layer, which later pods restore from,
// is left as it was.
func TestRootfsRestartedMemberKeepsCachedLayer(t *testing.T) {
	e := newRootfsEnv(t, "workload", "stop")
	pd := restoredPodOfWriter(t, e)
	c, _ := pd.join("writer", "/bin/writer")
	must(t, pd.p.Start(context.Background(), c))
	path := pd.p.layerPath("writer")
	target, err := filepath.EvalSymlinks(path)
	must(t, err)
	if b, _ := os.ReadFile(target); string(b) != "layer of first-writer" {
		t.Fatalf("first start: layer %q", b)
	}

	// The container exits; kubelet restarts it as a new container of the same name.
	c.Exit(1)
	c2 := newFakeTask("second-writer-restart-1")
	c2.created = false
	if pd.p.Join(context.Background(), c2, containerSpec("writer", "/bin/writer")) {
		t.Fatal("the restarted container waits")
	}
	must(t, c2.Create(context.Background()))
	must(t, pd.p.Start(context.Background(), c2))

	if b, _ := os.ReadFile(target); string(b) != "layer of first-writer" {
		t.Fatalf("the node cache's layer %s now holds %q (%d bytes): the restart wrote through the layer's symlink", target, b[:min(len(b), 16)], len(b))
	}
	// Whether a restarted container starts on the snapshot's layer again (as the restored
	// one did) or on its image alone is a choice; either way its layer file must be one.
	if b, err := os.ReadFile(path); err != nil || (string(b) != "layer of first-writer" && len(b) != 1024) {
		t.Fatalf("the restarted container's layer: %d bytes, %v", len(b), err)
	}
}

// The layer a container of a restored pod is started on must still be readable when
// runsc opens it at the container's start, even when the node cache entry it came from
// was removed meanwhile (another pod's failed restore of the same snapshot discards the
// entry, dropRestore(true); LRU eviction after cache.InUseGrace while kubelet pulls the
// container's image). A missing file fails `runsc start`: the container fails instead
// of starting cold.
func TestRootfsMemberLayerOutlivesCacheEntry(t *testing.T) {
	e := newRootfsEnv(t, "workload", "stop")
	pd := restoredPodOfWriter(t, e)
	_, f := pd.p.restoring()
	if f != nil {
		<-f.done // the pause container does not wait for the download
	}
	if f == nil || f.private || f.dir == "" {
		t.Fatal("want a restore from the node cache")
	}
	// Another pod whose restore of this snapshot failed discards the entry.
	must(t, pd.p.nodeCache.Discard(filepath.Base(f.dir)))

	c, _ := pd.join("writer", "/bin/writer")
	must(t, pd.p.Start(context.Background(), c))
	// runsc opens the annotation's path at the container's start (sandbox.StartSubcontainer).
	fh, err := os.Open(c.annots[AnnRootfsUpperTar+".writer"])
	if err != nil {
		t.Fatalf("runsc could not open the container's layer at start (the container fails): %v", err)
	}
	fh.Close()
}

// A rootfs-only pod under the workload trigger and postCheckpoint stop whose layer
// cannot be saved keeps running (gVisor's save resumed it, and saveRootfs kills only
// after a success). Nothing stopped it, so the lifecycle must not behave as if a
// checkpoint had: a later manual checkpoint must not block on the first one's result,
// and its committed stop exits 0. (A fix that kills the pod after the failed save is
// accepted too.)
func TestRootfsTriggerTarFailureRunsOn(t *testing.T) {
	e := newRootfsEnv(t, "workload", "stop")
	pd := createPod(t, e, "first")
	c, _ := pd.join("writer", "/bin/writer")
	must(t, pd.p.Start(context.Background(), c))
	c.mu.Lock()
	c.fail["tar"] = errors.New("fake: tar failed")
	c.mu.Unlock()
	pd.sb.checkpoints <- nil
	eventually(t, "the failed save", func() bool { return len(pd.p.result) == 1 || !pd.p.tookCheckpoint.Load() })
	time.Sleep(50 * time.Millisecond)
	if strings.Contains(pd.sb.callLog(), "kill") {
		// A fix may instead stop the pod as postCheckpoint: stop asks: its exit then
		// says the snapshot failed.
		if got := pd.p.SandboxExited(137); got != 1 {
			t.Fatalf("exit status after a failed stop snapshot = %d, want 1", got)
		}
		return
	}
	if pd.p.StoppedByCheckpoint(pd.sb) {
		t.Error("the sandbox still runs, yet StoppedByCheckpoint says a checkpoint stopped it (a kill that fails is then taken as done)")
	}

	// The operator takes a manual checkpoint; this one succeeds and stops the pod.
	c.mu.Lock()
	delete(c.fail, "tar")
	c.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		_, err := pd.p.Checkpoint(context.Background())
		done <- err
	}()
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(3 * time.Second):
		// It is blocked sending its result: the sandbox's exit reads the stale one.
		status := pd.p.SandboxExited(137)
		<-done
		t.Fatalf("the manual checkpoint blocked until the sandbox exited (on p.result, filled by the failed trigger); exit status %d", status)
	}
	if got := pd.p.SandboxExited(137); got != 0 {
		t.Fatalf("exit status after a committed stop = %d, want 0", got)
	}
}

// ctxTask is a fakeTask whose runsc commands fail once their context has ended, as
// exec.CommandContext does (it starts no process for a done context).
type ctxTask struct {
	*fakeTask
	cancel context.CancelFunc // called by TarRootfs: the checkpoint's caller gives up
}

func (c *ctxTask) TarRootfs(ctx context.Context, file string) error {
	c.cancel()
	return ctx.Err()
}

func (c *ctxTask) Thaw(ctx context.Context) error {
	if ctx.Err() != nil {
		return c.record("thaw-not-run")
	}
	return c.fakeTask.Thaw(ctx)
}

// A manual checkpoint whose caller gives up (podsnapshot checkpoint --timeout, the
// agent's request ended) while the layer is being saved must still resume the sandbox
// it paused: otherwise the pod stays frozen for good.
func TestRootfsCancelledCheckpointResumesSandbox(t *testing.T) {
	e := newRootfsEnv(t, "manual", "resume")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sb := &ctxTask{fakeTask: newFakeTask("one"), cancel: cancel}
	spec := ctrSpec()
	p := e.node.Plan(context.Background(), Sandbox{Task: sb, Spec: spec, Config: e.cfg})
	t.Cleanup(p.commits.Wait)
	must(t, p.Start(context.Background(), sb))
	if _, err := p.Checkpoint(ctx); err == nil {
		t.Fatal("the checkpoint succeeded")
	}
	if got := sb.callLog(); got != "start, freeze, thaw" {
		t.Fatalf("calls %q: the sandbox was paused and never resumed", got)
	}
}

// Manifest scopes: a manifest written before scopes (no scope) loads as whole-pod; a
// manifest mixing layers and memory image files, or of one scope listing the other's
// files, is refused.
func TestRootfsManifestScopeValidation(t *testing.T) {
	uuid := "0b6c5c8e-4f0e-4a5d-9d4e-2c1f7a9b3e10"
	mk := func(scope string, files ...string) *manifest.Manifest {
		m := manifest.New("default", "my-app", strings.Repeat("ab", 32), compat.Tuple{RunscVersion: "r", Arch: "amd64"}, time.Unix(1e9, 0))
		m.UUID, m.State, m.Scope = uuid, manifest.StateCommitted, scope
		for _, f := range files {
			m.Files = append(m.Files, storage.FileInfo{Name: manifest.ObjectName("default", "my-app", uuid, f),
				RawSize: 10, StoredSize: 5, Codec: "zstd", XXH64: strings.Repeat("0", 16)})
		}
		return m
	}
	decode := func(m *manifest.Manifest) (*manifest.Manifest, error) {
		b, err := json.Marshal(m)
		must(t, err)
		return manifest.Decode(b)
	}
	old, err := decode(mk("", manifest.CheckpointFile, manifest.PagesMetaFile, manifest.PagesFile))
	if err != nil || old.RootfsOnly() || old.ScopeName() != manifest.ScopeWholePod {
		t.Fatalf("a manifest without scope: %v, %+v", err, old)
	}
	if b, _ := json.Marshal(old); strings.Contains(string(b), `"scope"`) {
		t.Fatalf("a scope-less manifest gained a scope: %s", b)
	}
	if m, err := decode(mk(manifest.ScopeRootfsOnly, "rootfs-a.tar.zst", "rootfs-b.tar")); err != nil || len(m.RootfsLayers()) != 2 {
		t.Fatalf("rootfs-only manifest: %v", err)
	}
	for name, m := range map[string]*manifest.Manifest{
		"mixed rootfs-only":         mk(manifest.ScopeRootfsOnly, "rootfs-a.tar.zst", manifest.CheckpointFile),
		"mixed whole-pod":           mk(manifest.ScopeWholePod, manifest.CheckpointFile, "rootfs-a.tar.zst"),
		"mixed without scope":       mk("", manifest.CheckpointFile, "rootfs-a.tar.zst"),
		"rootfs-only of memory":     mk(manifest.ScopeRootfsOnly, manifest.CheckpointFile, manifest.PagesFile),
		"unknown scope":             mk("memory-only", manifest.CheckpointFile),
		"layer with a slash":        mk(manifest.ScopeRootfsOnly, "rootfs-a/b.tar.zst"),
		"layer of no container":     mk(manifest.ScopeRootfsOnly, "rootfs-.tar.zst"),
		"committed without a layer": mk(manifest.ScopeRootfsOnly),
	} {
		if _, err := decode(m); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A CRI pod in which a container restarted (the exited one is kept by kubelet until it
// is garbage-collected) can still be snapshotted: the restarted container's layer is
// saved, and the exited one is no second container of that name.
func TestSnapshotAfterContainerRestart(t *testing.T) {
	e := newRootfsEnv(t, "manual", "resume")
	pd := createPod(t, e, "first")
	c, _ := pd.join("writer", "/bin/writer")
	must(t, pd.p.Start(context.Background(), c))
	c.Exit(1)
	c2 := newFakeTask("first-writer-restart-1")
	c2.created = false
	pd.p.Join(context.Background(), c2, containerSpec("writer", "/bin/writer"))
	must(t, c2.Create(context.Background()))
	must(t, pd.p.Start(context.Background(), c2))
	m, err := pd.p.Checkpoint(context.Background())
	if err != nil {
		t.Fatalf("checkpoint of a pod whose container restarted: %v", err)
	}
	if _, ok := m.RootfsLayers()["writer"]; !ok {
		t.Fatalf("layers %v", m.RootfsLayers())
	}
}
