package podsnap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/stream"
	"github.com/podsnapshot/podsnapshot/internal/report"
	"github.com/podsnapshot/podsnapshot/storage"
)

// gatedStore holds ranged reads of pages.img that reach past stored offset from until
// open is closed.
type gatedStore struct {
	storage.Store
	from int64
	open chan struct{}
}

func (s *gatedStore) GetRange(ctx context.Context, name string, off, n int64) (io.ReadCloser, error) {
	if strings.Contains(name, "pages.img") && off+n > s.from {
		select {
		case <-s.open:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.Store.GetRange(ctx, name, off, n)
}

// streamedSnapshot commits, under e's workload policy, a snapshot whose pages are five
// frames (20 MiB), and empties the node cache so that the next restore streams from the
// store.
func streamedSnapshot(t *testing.T, e *env) *manifest.Manifest {
	t.Helper()
	p, sb := e.plan("sb1", "pod-sb1")
	sb.imageSize = 20 << 20
	must(t, p.Start(context.Background(), sb))
	sb.checkpoints <- nil
	eventually(t, "the commit", func() bool { return len(e.committed()) == 1 })
	must(t, os.RemoveAll(e.cfg.Cache()))
	return e.committed()[0]
}

// gateStore puts a gatedStore holding reads of pages from stored offset from in front
// of the env's store, for the pods planned from now on.
func (e *env) gateStore(from int64) *gatedStore {
	url := "file://" + e.store
	st, err := e.node.store(context.Background(), nodeStoreKey(url), url)
	must(e.t, err)
	gate := &gatedStore{Store: st, from: from, open: make(chan struct{})}
	e.node.mu.Lock()
	e.node.stores[nodeStoreKey(url)] = gate
	e.node.mu.Unlock()
	return gate
}

// startStreamed plans and starts sandbox id, which must restore by streaming (the test
// is skipped where FUSE cannot be mounted); the pod is ended at the test's end.
func startStreamed(t *testing.T, e *env, id string) (*Pod, *fakeTask) {
	t.Helper()
	p, sb := e.plan(id, "pod-"+id)
	endPod(t, p, sb)
	if p == nil || !p.Restores() {
		t.Fatal("the pod does not restore")
	}
	must(t, p.Start(context.Background(), sb))
	if _, f := p.restoring(); f.img == nil {
		t.Skip("no FUSE here: the snapshot was downloaded whole")
	}
	return p, sb
}

// endPod ends the sandbox sb of pod p at the test's end, passed or failed: its
// FUSE mount goes with it (a failed test would otherwise leave it, dead, in /tmp).
func endPod(t *testing.T, p *Pod, sb *fakeTask) {
	t.Cleanup(func() {
		if p != nil {
			p.SandboxExited(137)
			p.Delete(context.Background(), sb)
		}
	})
}

// A streamed restore whose pages object is cut short after the pod resumed: the pod is
// stopped (the sandbox killed once gVisor has not done it within stopGrace), the
// snapshot is marked Failed in storage, and the reports say both, naming the frame.
func TestRestoredPodStoppedWhenPagesFail(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	e.cfg.StreamRestore = true
	m := streamedSnapshot(t, e)
	var pages storage.FileInfo
	for _, f := range m.Files {
		if strings.Contains(f.Name, "pages.img") {
			pages = f
		}
	}
	x, err := storage.NewFrameIndex(pages)
	must(t, err)
	if x.Len() < 3 {
		t.Fatalf("pages of %d frames: want at least 3", x.Len())
	}
	from, _ := x.Stored(x.Len()-2, 1)
	gate := e.gateStore(from)

	p, sb := startStreamed(t, e, "late")
	// The pod runs; now the store's object loses its last frames.
	must(t, os.Truncate(filepath.Join(e.store, pages.Name), from))
	close(gate.open)

	rs := e.waitReports("late", 3)
	if kinds(rs) != "Restored, SnapshotFailed, RestoredPodStopped" || rs[1].Snapshot != m.UUID ||
		!strings.Contains(rs[2].Message, "frame") || !strings.Contains(rs[2].Message, "marked Failed") {
		t.Fatalf("reports: %+v", rs)
	}
	eventually(t, "the sandbox killed", func() bool { return strings.Contains(sb.callLog(), "kill 9") })
	var back *manifest.Manifest
	eventually(t, "the snapshot marked Failed", func() bool {
		back, err = e.repo().Get(context.Background(), m.Namespace, m.Policy, m.UUID)
		return err == nil && back.State == manifest.StateFailed
	})
	if !strings.Contains(back.Reason, "object ends") {
		t.Fatalf("the Failed snapshot's reason: %q", back.Reason)
	}
	if _, f := p.restoring(); !errors.Is(f.img.Err(), storage.ErrCorrupt) {
		t.Fatalf("image error %v", f.img.Err())
	}
}

// A stall this node remembers of a snapshot is probed before the next restore of it: the
// store still holding the frame back, the pod starts cold (StorageUnreachable) within the
// probe's bound; answering again, the memory goes and the pod restores.
func TestStallRememberedAndProbed(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	e.cfg.StreamRestore = true
	m := streamedSnapshot(t, e)
	gate := e.gateStore(0)

	// What stopRestored leaves after a stall at frame 2.
	p, _ := e.plan("probe", "pod-probe")
	p.rememberStall(context.Background(), m, fmt.Errorf("wrapped: %w", &stream.StallError{URL: "u", Frame: 2, After: time.Second}))
	p.Delete(context.Background(), p.sb)

	t0 := time.Now()
	p, _ = e.plan("still", "pod-still")
	if p.Restores() {
		t.Fatal("a pod restores from a snapshot whose store still stalls")
	}
	rs := e.reports("still")
	if len(rs) != 1 || rs[0].Reason != report.ReasonStorageUnreachable || !strings.Contains(rs[0].Message, "still does not deliver frame 2") {
		t.Fatalf("reports: %+v", rs)
	}
	if took := time.Since(t0); took > lookupTimeout {
		t.Errorf("the probe held Create for %v", took)
	}
	close(gate.open)
	p, _ = e.plan("back", "pod-back")
	if !p.Restores() {
		t.Fatal("with the store back the pod does not restore")
	}
	if _, err := os.Stat(p.stallFile(m)); !os.IsNotExist(err) {
		t.Fatalf("the stall is still remembered: %v", err)
	}
	p.Delete(context.Background(), p.sb)
}
