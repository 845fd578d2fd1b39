package repo

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/stream"
	"github.com/podsnapshot/podsnapshot/storage"
)

// TestStreamCorruptLeavesCallersManifest: Stream returns, the pod restores and
// reads its manifest (podsnap's logRestored, touchLater's copy `m := *shared`,
// reportRestored), while the fill finds a frame corrupt and OnCorrupt runs MarkFailed on
// the very manifest the caller passed, writing m.State and m.Reason from the fill's
// goroutine: a data race (run with -race), and the caller's manifest changes behind its
// back. MarkFailed (or markCorrupt) should write a copy.
func TestStreamCorruptLeavesCallersManifest(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	m := commit(t, r, strings.Repeat("c", 64), here, time.Now(), 3)
	var pages string
	for _, f := range m.Files {
		if n, _ := localName(f.Name); n == stream.PagesFile {
			pages = strings.TrimPrefix(r.Store.URL(f.Name), "file://")
		}
	}
	b, err := os.ReadFile(pages)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40 // same size: checkSize passes, the frame's checksum does not
	if err := os.WriteFile(pages, b, 0o600); err != nil {
		t.Fatal(err)
	}
	c := &cache.Cache{Dir: t.TempDir(), MaxBytes: 1 << 30}
	img, err := r.Stream(ctx, c, m, filepath.Join(t.TempDir(), "mnt"))
	if errors.Is(err, stream.ErrNoFUSE) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	// The restored pod's side: it reads its manifest while the pages arrive.
	deadline := time.Now().Add(10 * time.Second)
	for {
		copied := *m // as touchLater does
		_ = copied
		select {
		case <-img.Failed():
		default:
			if time.Now().Before(deadline) {
				continue
			}
			t.Fatal("the corrupt frame was not found")
		}
		break
	}
	// Wait until the store says Failed (OnCorrupt ran), then look at the caller's copy.
	for time.Now().Before(deadline) {
		if back := reread(t, r, m); back.State == manifest.StateFailed {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	copied := *m
	if copied.State != manifest.StateCommitted {
		t.Fatalf("the caller's manifest was rewritten by the fill's goroutine after Stream returned: state %s, reason %q",
			copied.State, copied.Reason)
	}
}

// getsStore records the names the store is asked to Get.
type getsStore struct {
	storage.Store
	mu   sync.Mutex
	gets []string // guarded by mu
}

func (s *getsStore) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	s.mu.Lock()
	s.gets = append(s.gets, name)
	s.mu.Unlock()
	return s.Store.Get(ctx, name)
}

// TestStreamReadsHotFramesOfItsSnapshot: with HotFrames, Stream reads the list next to the
// snapshot's files; without, it reads none.
func TestStreamReadsHotFramesOfItsSnapshot(t *testing.T) {
	for _, on := range []bool{true, false} {
		r := newRepo(t)
		gs := &getsStore{Store: r.Store}
		r.Store, r.HotFrames = gs, on
		m := commit(t, r, strings.Repeat("c", 64), here, time.Now(), 3)
		c := &cache.Cache{Dir: t.TempDir(), MaxBytes: 1 << 30}
		img, err := r.Stream(context.Background(), c, m, filepath.Join(t.TempDir(), "mnt"))
		if errors.Is(err, stream.ErrNoFUSE) {
			t.Skip(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		<-img.Done()
		img.Close()
		want := manifest.ObjectName(m.Namespace, m.Policy, m.UUID, manifest.HotFramesFile)
		gs.mu.Lock()
		asked := slices.Contains(gs.gets, want)
		gs.mu.Unlock()
		if asked != on {
			t.Fatalf("HotFrames %v: Stream read %s: %v", on, want, asked)
		}
	}
}

// TestHotFramesGoWithTheSnapshot: a snapshot's hot-frame list is its own (no orphan while
// it exists), a deleted or failed snapshot takes no new one, and Delete removes it.
func TestHotFramesGoWithTheSnapshot(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	m := commit(t, r, strings.Repeat("d", 64), here, time.Now(), 4)
	list := manifest.ObjectName(m.Namespace, m.Policy, m.UUID, manifest.HotFramesFile)
	if _, err := r.Store.PutIfAbsent(ctx, list, strings.NewReader("{}")); err != nil {
		t.Fatal(err)
	}
	if err := r.stillCommitted(ctx, m); err != nil {
		t.Fatalf("a committed snapshot refused its list: %v", err)
	}
	orphans, err := r.Orphans(ctx, "", time.Now().Add(time.Hour))
	if err != nil || len(orphans) != 0 {
		t.Fatalf("orphans of a committed snapshot with a list: %v, %v", orphans, err)
	}
	if err := r.Delete(ctx, reread(t, r, m)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Store.Stat(ctx, list); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the list after Delete: %v, want ErrNotFound", err)
	}
	if err := r.stillCommitted(ctx, m); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a deleted snapshot: %v, want ErrNotFound", err)
	}
	failed := commit(t, r, strings.Repeat("d", 64), here, time.Now(), 5)
	if err := r.MarkFailed(ctx, failed, "corrupt"); err != nil {
		t.Fatal(err)
	}
	if err := r.stillCommitted(ctx, failed); err == nil {
		t.Fatal("a failed snapshot would take a list")
	}
}
