package stream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/storage"
)

// stallingStore holds every ranged read that reaches stored offset from open until its
// context ends: a store that keeps the connection open and sends nothing.
type stallingStore struct {
	*testStore
	from int64
}

func (s *stallingStore) GetRange(ctx context.Context, name string, off, n int64) (io.ReadCloser, error) {
	if strings.HasSuffix(name, "pages.img") && off+n > s.from {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.testStore.GetRange(ctx, name, off, n)
}

// stalledAt20 is a snapshot of 32 frames whose store holds every read from frame 20 on
// open, with the stall deadline stall.
func stalledAt20(t *testing.T, stall time.Duration) Source {
	ts, src := snapshot(t, storage.Zstd{}, pagesData(32*testFrame))
	x, _ := storage.NewFrameIndex(src.Files[2])
	from, _ := x.Stored(20, 1)
	src.Store = &stallingStore{testStore: ts, from: from}
	src.Stall = stall
	return src
}

// storePath is the file of object name in the local store under ts.
func storePath(ts *testStore, name string) string {
	return strings.TrimPrefix(ts.URL(name), "file://")
}

// TestStreamTruncatedBeforeOpen: a pages object shorter than its manifest says is corrupt
// at Open (one metadata call), before anything restores from it, for both codecs; nothing
// is left in the node cache.
func TestStreamTruncatedBeforeOpen(t *testing.T) {
	for _, codec := range []storage.Codec{storage.Zstd{}, storage.None{}} {
		t.Run(codec.Name(), func(t *testing.T) {
			ts, src := snapshot(t, codec, pagesData(16*testFrame))
			if err := os.Truncate(storePath(ts, src.Files[2].Name), src.Files[2].StoredSize/2); err != nil {
				t.Fatal(err)
			}
			_, err := Open(context.Background(), src, filepath.Join(t.TempDir(), "mnt"))
			if !errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), "size mismatch") {
				t.Fatalf("Open of a truncated snapshot: %v; want corrupt, size mismatch", err)
			}
			if left, _ := os.ReadDir(src.Cache.Dir); len(left) > 1 {
				t.Fatalf("left in the node cache: %v", left)
			}
		})
	}
}

// TestStreamTruncatedWhileArriving: the pages object cut short after the restore began
// fails the file within a second, naming a frame past the cut, and reports the snapshot
// corrupt: no retrying of a frame that can never arrive.
func TestStreamTruncatedWhileArriving(t *testing.T) {
	pages := pagesData(64 * testFrame)
	ts, src := snapshot(t, storage.Zstd{}, pages)
	ts.delay = 20 * time.Millisecond
	x, _ := storage.NewFrameIndex(src.Files[2])
	cut, _ := x.Stored(40, 1)
	var mu sync.Mutex
	var reports []string
	src.OnCorrupt = func(err error) { mu.Lock(); reports = append(reports, err.Error()); mu.Unlock() }
	img := open(t, src)
	if err := os.Truncate(storePath(ts, src.Files[2].Name), cut); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if _, err := os.ReadFile(filepath.Join(img.Dir, PagesFile)); err == nil {
		t.Fatal("a read past the cut succeeded")
	}
	select {
	case <-img.Failed():
	case <-time.After(5 * time.Second):
		t.Fatal("the file did not fail")
	}
	if took := time.Since(t0); took > 2*time.Second {
		t.Errorf("the truncated object failed the file after %v", took)
	}
	waitDone(t, img)
	mu.Lock()
	defer mu.Unlock()
	if len(reports) != 1 || !strings.Contains(reports[0], "object ends") {
		t.Fatalf("corrupt reports: %q", reports)
	}
	if !errors.Is(img.Err(), storage.ErrCorrupt) || img.Published() != "" {
		t.Fatalf("Err %v, published %q", img.Err(), img.Published())
	}
}

// TestLinkedFrameEOF: a linked pages file (the local store's object itself) cut short is
// corrupt at the first frame it no longer holds.
func TestLinkedFrameEOF(t *testing.T) {
	ts, src := snapshot(t, storage.None{}, pagesData(8*testFrame))
	x, _ := storage.NewFrameIndex(src.Files[2])
	path := storePath(ts, src.Files[2].Name)
	if err := os.Truncate(path, 5*testFrame+10); err != nil {
		t.Fatal(err)
	}
	data, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer data.Close()
	var got []int
	err = verifier(ts, x, data)(context.Background(), 3, 4, func(i int) { got = append(got, i) }, func() {})
	if !errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), "frame 5: object ends early") || len(got) != 2 {
		t.Fatalf("linked fetch of a cut file: %v (frames %v); want frames 3, 4, then corrupt at frame 5", err, got)
	}
}

// TestStreamStalled: a store that holds a read open without a byte fails the file after
// the stall deadline and one more try, naming the frame; the snapshot is not reported
// corrupt (its bytes were never seen bad), and the frames before the stall arrived.
func TestStreamStalled(t *testing.T) {
	src := stalledAt20(t, 200*time.Millisecond)
	corrupt := false
	src.OnCorrupt = func(error) { corrupt = true }
	img := open(t, src)
	f, err := os.Open(filepath.Join(img.Dir, PagesFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 16*testFrame)
	if _, err := f.ReadAt(head, 0); err != nil {
		t.Fatalf("frames before the stall: %v", err)
	}
	t0 := time.Now()
	if _, err := f.ReadAt(head[:100], 25*testFrame); err == nil {
		t.Fatal("a read of a stalled frame succeeded")
	}
	if took := time.Since(t0); took > 3*time.Second {
		t.Errorf("the stalled read failed after %v; want about 2 x %v", took, src.Stall)
	}
	waitDone(t, img)
	if err := img.Err(); !errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), "frame 2") {
		t.Fatalf("Err = %v; want ErrStalled naming a frame from 20", err)
	}
	if corrupt || img.Published() != "" {
		t.Fatalf("a stall reported the snapshot corrupt (%v) or published it (%q)", corrupt, img.Published())
	}
}

// TestLinkedCutAfterVerified: a local store's uncompressed object is the fill itself (a
// hard link); cut short after its frames were verified, a read of the bytes it lost fails
// (EIO) and the snapshot is reported corrupt, instead of a short read the sandbox cannot
// explain.
func TestLinkedCutAfterVerified(t *testing.T) {
	ts, src := snapshot(t, storage.None{}, pagesData(16*testFrame))
	src.Store = ts.Store // the local store itself, which links (the wrapper hides Link)
	src.streamLinked = true
	var mu sync.Mutex
	var reports []string
	src.OnCorrupt = func(err error) { mu.Lock(); reports = append(reports, err.Error()); mu.Unlock() }
	img := open(t, src)
	waitDone(t, img)
	if !img.pages.linked {
		t.Fatal("the pages file is not linked to the store's object")
	}
	if err := os.Truncate(storePath(ts, src.Files[2].Name), 10*testFrame); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(img.Dir, PagesFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 100)
	if _, err := f.ReadAt(buf, 5*testFrame); err != nil {
		t.Fatalf("a read before the cut: %v", err)
	}
	if _, err := f.ReadAt(buf, 12*testFrame); err == nil {
		t.Fatal("a read of bytes the object lost succeeded")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reports) != 1 || !strings.Contains(reports[0], "frame 10: object ends early") {
		t.Fatalf("corrupt reports: %q", reports)
	}
}

// TestFUSEDeviceNotInherited: the mount's /dev/fuse descriptor is close-on-exec, so that
// no process the shim starts keeps a dead shim's mount open (go-fuse leaves it inheritable
// for a direct mount).
func TestFUSEDeviceNotInherited(t *testing.T) {
	_, src := snapshot(t, storage.Zstd{}, pagesData(4*testFrame))
	open(t, src)
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	found := 0
	for _, e := range fds {
		if target, _ := os.Readlink("/proc/self/fd/" + e.Name()); target == "/dev/fuse" {
			found++
			fd, _ := strconv.Atoi(e.Name())
			flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
			if err != nil || flags&unix.FD_CLOEXEC == 0 {
				t.Errorf("/dev/fuse as fd %d: flags %#x, %v; want close-on-exec", fd, flags, err)
			}
		}
	}
	if found == 0 {
		t.Fatal("no /dev/fuse descriptor while mounted")
	}
}

// TestStreamSharerFailsWithFiller: two shims restore one snapshot; the filler's store
// stalls (or a frame is bad), the filler's file fails and its fill is aborted (removed).
// The shim that shares the fill must then fail too (Failed closed, Err set), so that its
// restored pod is stopped (guardRestored) instead of waiting for ever for frames that
// nobody fetches any more: TakeOver of a removed fill never succeeds.
func TestStreamSharerFailsWithFiller(t *testing.T) {
	src := stalledAt20(t, 100*time.Millisecond)
	leader := open(t, src)
	if leader.filling() == nil {
		t.Fatal("the first Open does not fill")
	}
	follower, err := Open(context.Background(), src, filepath.Join(t.TempDir(), "mnt"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(follower.Close)
	if follower.filling() != nil {
		t.Fatal("the second Open fills too")
	}
	select {
	case <-leader.Failed():
	case <-time.After(10 * time.Second):
		t.Fatal("the filler's file did not fail")
	}
	if !errors.Is(leader.Err(), ErrStalled) {
		t.Fatalf("filler: %v", leader.Err())
	}
	select {
	case <-follower.Failed():
	case <-follower.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("the sharing shim's pages never fail after its filler gave up (%v): its restored pod would wait for ever; err %v",
			leader.Err(), follower.Err())
	}
	if !errors.Is(follower.Err(), ErrStalled) {
		t.Fatalf("the sharing shim's file: %v; want it stalled as its filler's", follower.Err())
	}
}

// tricklingStore delivers ranged reads of pages.img slowly but steadily: chunk bytes
// every tick. The store never stops answering.
type tricklingStore struct {
	*testStore
	chunk int
	tick  time.Duration
}

func (s *tricklingStore) GetRange(ctx context.Context, name string, off, n int64) (io.ReadCloser, error) {
	rc, err := s.testStore.GetRange(ctx, name, off, n)
	if err != nil || !strings.HasSuffix(name, "pages.img") {
		return rc, err
	}
	return &trickle{ReadCloser: rc, ctx: ctx, chunk: s.chunk, tick: s.tick}, nil
}

type trickle struct {
	io.ReadCloser
	ctx   context.Context
	chunk int
	tick  time.Duration
}

func (r *trickle) Read(p []byte) (int, error) {
	select {
	case <-r.ctx.Done():
		return 0, r.ctx.Err()
	case <-time.After(r.tick):
	}
	if len(p) > r.chunk {
		p = p[:r.chunk]
	}
	return r.ReadCloser.Read(p)
}

// TestStreamSlowStoreNotStalled: a store that keeps sending bytes, only slower than
// one frame per stall deadline (a congested link: 4 fill reads and the sandbox's
// demand reads share it), is not a store that "holds the read open without answering".
// The stall deadline counts bytes, not frames: such a store does not fail the file.
func TestStreamSlowStoreNotStalled(t *testing.T) {
	pages := pagesData(8 * testFrame)
	ts, src := snapshot(t, storage.None{}, pages) // 64 KiB stored per frame
	// 8 KiB every 50 ms: 160 KiB/s, a frame every 400 ms; bytes every 50 ms.
	src.Store = &tricklingStore{testStore: ts, chunk: 8 << 10, tick: 50 * time.Millisecond}
	src.Stall = 250 * time.Millisecond
	img := open(t, src)
	if img.pages.linked {
		t.Fatal("linked: the test needs a fetched file")
	}
	all, err := os.ReadFile(filepath.Join(img.Dir, PagesFile))
	if err != nil || !bytes.Equal(all, pages) {
		t.Fatalf("read through a slow but answering store: %v (Err %v)", err, img.Err())
	}
	waitDone(t, img)
	if err := img.Err(); err != nil {
		t.Fatalf("a store that kept sending bytes failed the file: %v", err)
	}
}

// TestStreamCloseBoundedWhilePublishing: publish holds img.mu across Filling.Publish,
// which now fsyncs every file of the fill (seconds for a fill of GiBs) and then takes
// the node cache's flock. Close waits closeWait for the download and then takes img.mu,
// so a Delete of the pod waits for the whole fsync (and for any other shim holding the
// cache lock) instead of closeWait at most. Here the cache lock is held by "another
// shim" while the fill publishes.
func TestStreamCloseBoundedWhilePublishing(t *testing.T) {
	pages := pagesData(8 * testFrame)
	_, src := snapshot(t, storage.Zstd{}, pages)
	img, err := Open(context.Background(), src, filepath.Join(t.TempDir(), "mnt"))
	if errors.Is(err, ErrNoFUSE) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(filepath.Join(src.Cache.Dir, cache.LockFile), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	held := closeWait + 5*time.Second
	go func() { time.Sleep(held); unix.Close(fd) }()
	if _, err := os.ReadFile(filepath.Join(img.Dir, PagesFile)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the fill is complete: publish runs
	t0 := time.Now()
	img.Close()
	if took := time.Since(t0); took > closeWait+2*time.Second {
		t.Fatalf("Close took %v; closeWait is %v: it waited for publish's fsync and cache lock under img.mu", took, closeWait)
	}
}
