package repo

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/stream"
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
