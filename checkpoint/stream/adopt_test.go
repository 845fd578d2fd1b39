package stream

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/storage"
)

// TestLinkedResidentAdopted: a local store's uncompressed object whose pages are in
// memory (just written) is verified whole at Open and published as the node cache
// entry: the Image is a cached one (no mount, nothing streams), its pages.img is the
// store's object (same inode) and holds the snapshot's bytes, and the next Open finds
// the entry.
func TestLinkedResidentAdopted(t *testing.T) {
	pages := pagesData(16 * testFrame)
	ts, src := snapshot(t, storage.None{}, pages)
	src.Store = ts.Store // the local store itself, which links
	img := open(t, src)
	if !img.Cached || !img.Adopted || img.pages != nil {
		t.Fatalf("Open of a resident linked snapshot: Cached %v, Adopted %v, streams %v; want an adopted cache entry", img.Cached, img.Adopted, img.pages != nil)
	}
	entry := filepath.Join(src.Cache.Dir, src.Key)
	if img.Dir != entry {
		t.Fatalf("restore from %s, want the cache entry %s", img.Dir, entry)
	}
	got, err := os.ReadFile(filepath.Join(img.Dir, PagesFile))
	if err != nil || !bytes.Equal(got, pages) {
		t.Fatalf("the entry's pages.img: %d bytes (%v), want the %d stored", len(got), err, len(pages))
	}
	a, _ := os.Stat(filepath.Join(img.Dir, PagesFile))
	b, _ := os.Stat(storePath(ts, src.Files[2].Name))
	if !os.SameFile(a, b) {
		t.Fatal("the entry's pages.img is a copy, not the store's object")
	}
	for _, marker := range []string{linkedFile, progressFile} {
		if _, err := os.Stat(filepath.Join(img.Dir, marker)); err == nil {
			t.Errorf("the entry kept the fill's %s", marker)
		}
	}
	again := open(t, src)
	if !again.Cached || again.Adopted || again.Dir != entry {
		t.Fatalf("the next Open: Cached %v from %s; want the entry", again.Cached, again.Dir)
	}
}

// TestLinkedResidentNotKept: when the verified fill cannot become the node cache entry
// (its fsync or rename fails), the snapshot, sound, streams instead of failing Open
// (which would start the pod cold).
func TestLinkedResidentNotKept(t *testing.T) {
	pages := pagesData(16 * testFrame)
	ts, src := snapshot(t, storage.None{}, pages)
	src.Store = ts.Store
	defer func(p func(*cache.Filling) (string, error)) { publishFill = p }(publishFill)
	publishFill = func(fl *cache.Filling) (string, error) {
		fl.Abort() // as Publish does on error
		return "", errors.New("fsync: input/output error")
	}
	img := open(t, src)
	if img.Cached || img.Adopted || img.pages == nil {
		t.Fatalf("Open after the entry could not be kept: Cached %v, Adopted %v, streams %v; want it streamed", img.Cached, img.Adopted, img.pages != nil)
	}
	got, err := os.ReadFile(filepath.Join(img.Dir, PagesFile))
	if err != nil || !bytes.Equal(got, pages) {
		t.Fatalf("read through the mount: %d bytes (%v), want the %d stored", len(got), err, len(pages))
	}
	waitDone(t, img)
}

// TestLinkedResidentCorrupt: a bad frame in a resident linked object fails Open with a
// corrupt error naming the frame (the shim marks the snapshot failed and the pod starts
// cold) and leaves no cache entry nor fill behind.
func TestLinkedResidentCorrupt(t *testing.T) {
	ts, src := snapshot(t, storage.None{}, pagesData(16*testFrame))
	src.Store = ts.Store
	path := storePath(ts, src.Files[2].Name)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xff}, 9*testFrame+5); err != nil {
		t.Fatal(err)
	}
	f.Close()
	img, err := Open(context.Background(), src, filepath.Join(t.TempDir(), "mnt"))
	if err == nil {
		img.Close()
		t.Fatal("Open of a corrupt resident linked snapshot succeeded")
	}
	if !errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), "frame 9") {
		t.Fatalf("Open: %v; want a corrupt error naming frame 9", err)
	}
	left, _ := os.ReadDir(src.Cache.Dir)
	for _, e := range left {
		if e.Name() != cache.LockFile {
			t.Errorf("left in the cache: %s", e.Name())
		}
	}
}

// TestResident: mincore sees a file just written as in memory, and one whose pages were
// dropped (fdatasync, then POSIX_FADV_DONTNEED) as not, or not wholly.
func TestResident(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pages.img")
	if err := os.WriteFile(path, pagesData(64*4096), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	share, err := resident(f, 64*4096)
	if err != nil || share < adoptResident {
		t.Fatalf("a file just written: resident %.2f (%v), want at least %.2f", share, err, adoptResident)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Skipf("cannot drop the page cache here: %v", err)
	}
	if share, _ := resident(f, 64*4096); share == 1 {
		t.Skip("the kernel kept every page (tmpfs ignores POSIX_FADV_DONTNEED)")
	}
	if share, err := resident(f, 64*4096); err != nil || share >= adoptResident {
		t.Fatalf("a file whose pages were dropped: resident %.2f (%v), want below %.2f", share, err, adoptResident)
	}
}
