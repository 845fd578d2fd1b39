package stream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/storage"
	"github.com/podsnapshot/podsnapshot/storage/local"
)

// testStore wraps a store: counts ranged reads of pages, can delay them, and can flip a
// byte of the first (or every) read of a chosen stored offset.
type testStore struct {
	storage.Store
	ranges    atomic.Int64
	rangeByte atomic.Int64 // stored bytes read by GetRange
	delay     time.Duration
	flipAt    int64 // stored offset to flip; -1: none
	flipTimes atomic.Int64
}

func (s *testStore) GetRange(ctx context.Context, name string, off, n int64) (io.ReadCloser, error) {
	s.ranges.Add(1)
	s.rangeByte.Add(n)
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	rc, err := s.Store.GetRange(ctx, name, off, n)
	if err != nil || s.flipAt < off || s.flipAt >= off+n || s.flipTimes.Add(-1) < 0 {
		return rc, err
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, err
	}
	b[s.flipAt-off] ^= 0x40
	return io.NopCloser(bytes.NewReader(b)), nil
}

const testFrame = 64 << 10

// snapshot stores a three-file image with frames and returns its source.
func snapshot(t *testing.T, codec storage.Codec, pages []byte) (*testStore, Source) {
	t.Helper()
	st, err := local.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ts := &testStore{Store: st, flipAt: -1}
	ctx := context.Background()
	var files []storage.FileInfo
	for name, data := range map[string][]byte{"checkpoint.img": []byte("state"), "pages_meta.img": []byte("meta")} {
		info, err := storage.UploadFramed(ctx, st, "s/"+name, bytes.NewReader(data), storage.None{}, testFrame)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, info)
	}
	info, err := storage.UploadFramed(ctx, st, "s/pages.img", bytes.NewReader(pages), codec, testFrame)
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, info)
	return ts, Source{
		Store:     ts,
		Files:     files,
		LocalName: func(o string) (string, bool) { return strings.TrimPrefix(o, "s/"), true },
		Key:       strings.Repeat("ab", 32),
		Cache:     &cache.Cache{Dir: t.TempDir(), MaxBytes: 1 << 30},
	}
}

func pagesData(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/4096)
	}
	return b
}

func open(t *testing.T, src Source) *Image {
	t.Helper()
	img, err := Open(context.Background(), src, filepath.Join(t.TempDir(), "mnt"))
	if errors.Is(err, ErrNoFUSE) {
		t.Skipf("no FUSE here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(img.Close)
	return img
}

func waitDone(t *testing.T, img *Image) {
	t.Helper()
	select {
	case <-img.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the download did not end")
	}
}

// TestStreamReadsWhileArriving: a read near the end returns the right bytes long before
// the sequential download could have got there; the whole file reads back equal, and the
// fill becomes the node cache entry; the next Open is a cached one.
func TestStreamReadsWhileArriving(t *testing.T) {
	for _, codec := range []storage.Codec{storage.Zstd{}, storage.None{}} {
		t.Run(codec.Name(), func(t *testing.T) {
			pages := pagesData(64*testFrame + 100)
			ts, src := snapshot(t, codec, pages)
			ts.delay = 20 * time.Millisecond
			img := open(t, src)
			f, err := os.Open(filepath.Join(img.Dir, PagesFile))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got := make([]byte, 1000)
			t0 := time.Now()
			off := int64(60*testFrame + 5)
			if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, pages[off:off+1000]) {
				t.Fatalf("ReadAt(%d): %v, equal %v", off, err, bytes.Equal(got, pages[off:off+1000]))
			}
			// Sequentially, 2 readers of 4 frames per 20 ms would need 160 ms for frame 60.
			if took := time.Since(t0); took > 120*time.Millisecond {
				t.Errorf("a read of frame 60 took %v: not fetched ahead", took)
			}
			all, err := io.ReadAll(f)
			if err != nil || !bytes.Equal(all, pages) {
				t.Fatalf("whole read: %v, equal %v", err, bytes.Equal(all, pages))
			}
			for _, n := range []string{"checkpoint.img", "pages_meta.img"} {
				b, err := os.ReadFile(filepath.Join(img.Dir, n))
				if err != nil || len(b) == 0 {
					t.Fatalf("%s: %v", n, err)
				}
			}
			waitDone(t, img)
			if img.Published() == "" {
				t.Fatal("not published to the node cache")
			}
			if b, err := os.ReadFile(filepath.Join(img.Published(), PagesFile)); err != nil || !bytes.Equal(b, pages) {
				t.Fatalf("cache entry: %v", err)
			}
			again := open(t, src)
			if !again.Cached || again.Dir != img.Published() {
				t.Fatalf("second Open: cached %v dir %s", again.Cached, again.Dir)
			}
		})
	}
}

// TestStreamFlippedByteRefetched: a frame that arrives corrupt once is fetched again and
// the reader gets the right bytes.
func TestStreamFlippedByteRefetched(t *testing.T) {
	pages := pagesData(16 * testFrame)
	ts, src := snapshot(t, storage.Zstd{}, pages)
	x, _ := storage.NewFrameIndex(src.Files[2])
	off, _ := x.Stored(9, 1)
	ts.flipAt = off + 3
	ts.flipTimes.Store(1)
	var corrupt atomic.Int64
	src.OnCorrupt = func(error) { corrupt.Add(1) }
	img := open(t, src)
	all, err := os.ReadFile(filepath.Join(img.Dir, PagesFile))
	if err != nil || !bytes.Equal(all, pages) {
		t.Fatalf("read: %v, equal %v", err, bytes.Equal(all, pages))
	}
	waitDone(t, img)
	if corrupt.Load() != 0 || img.Published() == "" {
		t.Fatalf("corrupt reports %d, published %q", corrupt.Load(), img.Published())
	}
}

// TestStreamCorruptFails: a frame corrupt in the store fails the read of it (EIO) and
// reports the snapshot corrupt once; nothing is kept in the node cache.
func TestStreamCorruptFails(t *testing.T) {
	for _, codec := range []storage.Codec{storage.Zstd{}, storage.None{}} {
		t.Run(codec.Name(), func(t *testing.T) {
			pages := pagesData(16 * testFrame)
			ts, src := snapshot(t, codec, pages)
			x, _ := storage.NewFrameIndex(src.Files[2])
			off, _ := x.Stored(9, 1)
			if codec.Name() == storage.CodecNone {
				// Linked from the local store: corrupt the store's file itself.
				path := filepath.Join(strings.TrimPrefix(ts.URL("s/pages.img"), "file://"))
				b, _ := os.ReadFile(path)
				b[off+3] ^= 0x40
				os.WriteFile(path, b, 0o600)
			} else {
				ts.flipAt = off + 3
				ts.flipTimes.Store(1 << 30)
			}
			var mu sync.Mutex
			var reports []string
			src.OnCorrupt = func(err error) { mu.Lock(); reports = append(reports, err.Error()); mu.Unlock() }
			img := open(t, src)
			_, err := os.ReadFile(filepath.Join(img.Dir, PagesFile))
			if err == nil {
				t.Fatal("a read of the corrupt frame succeeded")
			}
			waitDone(t, img)
			mu.Lock()
			defer mu.Unlock()
			if len(reports) != 1 || !strings.Contains(reports[0], "frame 9") {
				t.Fatalf("corrupt reports: %q", reports)
			}
			if img.Published() != "" {
				t.Fatal("a corrupt snapshot was kept in the node cache")
			}
		})
	}
}

// TestStreamShared: four restores of one snapshot at once share one download.
func TestStreamShared(t *testing.T) {
	pages := pagesData(32 * testFrame)
	ts, src := snapshot(t, storage.Zstd{}, pages)
	ts.delay = 5 * time.Millisecond
	imgs := make([]*Image, 4)
	var wg sync.WaitGroup
	for i := range imgs {
		wg.Go(func() {
			img, err := Open(context.Background(), src, filepath.Join(t.TempDir(), "mnt"))
			if err != nil {
				t.Error(err)
				return
			}
			imgs[i] = img
		})
	}
	wg.Wait()
	for _, img := range imgs {
		if img == nil {
			t.FailNow()
		}
		t.Cleanup(img.Close)
		all, err := os.ReadFile(filepath.Join(img.Dir, PagesFile))
		if err != nil || !bytes.Equal(all, pages) {
			t.Fatalf("read: %v", err)
		}
	}
	for _, img := range imgs {
		waitDone(t, img)
	}
	stored := src.Files[2].StoredSize
	if got := ts.rangeByte.Load(); got != stored {
		t.Fatalf("ranged reads fetched %d bytes of pages, the file stores %d: not one download", got, stored)
	}
}

// TestStreamTakeOver: the shim that fills goes away mid-download; the one sharing its fill
// takes it over, reads every byte and publishes the entry.
func TestStreamTakeOver(t *testing.T) {
	pages := pagesData(48 * testFrame)
	ts, src := snapshot(t, storage.Zstd{}, pages)
	ts.delay = 30 * time.Millisecond
	leader, err := Open(context.Background(), src, filepath.Join(t.TempDir(), "mnt"))
	if errors.Is(err, ErrNoFUSE) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	follower := open(t, src)
	if follower.filling() != nil {
		t.Fatal("the second Open fills too")
	}
	time.Sleep(40 * time.Millisecond)
	leader.Close()
	all, err := os.ReadFile(filepath.Join(follower.Dir, PagesFile))
	if err != nil || !bytes.Equal(all, pages) {
		t.Fatalf("read after the filler left: %v, equal %v", err, bytes.Equal(all, pages))
	}
	waitDone(t, follower)
	if follower.Published() == "" {
		t.Fatal("the shim that took over did not publish the entry")
	}
}

// TestWriteback: a frame's range of a regular file is handed to writeback and it stays
// on; a descriptor that takes no sync_file_range (a pipe) turns it off for good instead
// of failing the fill; a private fill's (newWriteback off) starts none.
func TestWriteback(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "pages.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	w := newWriteback(f, true)
	w.start(0, 1<<20)
	if w.off.Load() {
		t.Fatalf("writeback turned off on a regular file of %s", f.Name())
	}
	if !newWriteback(f, false).off.Load() {
		t.Fatal("writeback on for a private fill")
	}
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer pw.Close()
	p := &writeback{fd: int(pw.Fd())}
	p.start(0, 4096)
	if !p.off.Load() {
		t.Fatal("writeback still on for a pipe, which refuses sync_file_range")
	}
}

// TestStreamSharerOfDeadFiller: a shim shares a fill whose filler dies before its small
// files are complete (its lock goes with its process; the directory stays). The sharer
// claims again at once and fills itself, instead of waiting out preparedWait and
// starting the pod cold.
func TestStreamSharerOfDeadFiller(t *testing.T) {
	pages := pagesData(8 * testFrame)
	_, src := snapshot(t, storage.Zstd{}, pages)
	claim, err := src.Cache.Claim(src.Key, int64(len(pages))+9)
	if err != nil || claim.Fill == nil {
		t.Fatalf("claim: %+v, %v", claim, err)
	}
	type result struct {
		img *Image
		err error
	}
	got := make(chan result, 1)
	go func() {
		img, err := Open(context.Background(), src, filepath.Join(t.TempDir(), "mnt"))
		got <- result{img, err}
	}()
	time.Sleep(100 * time.Millisecond) // the sharer is waiting for the progress file
	claim.Fill.Release()               // the filler dies: its lock is gone, its directory stays
	var r result
	select {
	case r = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the sharer still waits for a filler that died")
	}
	if errors.Is(r.err, ErrNoFUSE) {
		t.Skip(r.err)
	}
	if r.err != nil {
		t.Fatalf("Open after the filler died: %v", r.err)
	}
	t.Cleanup(r.img.Close)
	all, err := os.ReadFile(filepath.Join(r.img.Dir, PagesFile))
	if err != nil || !bytes.Equal(all, pages) {
		t.Fatalf("read: %v, equal %v", err, bytes.Equal(all, pages))
	}
	waitDone(t, r.img)
	if r.img.Published() == "" {
		t.Fatal("the sharer did not become the filler: it published no entry")
	}
}
