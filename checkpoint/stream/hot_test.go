package stream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/storage"
)

// testIndex is the frame index of a file of n frames of size bytes, stored uncompressed.
func testIndex(t *testing.T, n int, size int64) *storage.FrameIndex {
	t.Helper()
	info := storage.FileInfo{Name: "ns/p/u/pages.img", RawSize: int64(n) * size, StoredSize: int64(n) * size,
		Codec: storage.CodecNone, XXH64: "0123456789abcdef", FrameSize: size}
	for range n {
		info.Frames = append(info.Frames, storage.Frame{Size: size})
	}
	x, err := storage.NewFrameIndex(info)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// TestRecorderSequentialVsJumps: gVisor's loader reads 256 KiB pieces in file order, up to
// 32 MiB of them out of order; none of those is hot. Reads far ahead of it are, in the
// order first read, once each; reads behind it are not; faults a few MiB apart ahead of
// it do not move its frontier, a frame it passes without reading does not stop it; the
// list stops at MaxHotFrames.
func TestRecorderSequentialVsJumps(t *testing.T) {
	const frame = 4 << 20
	x := testIndex(t, 8192, frame) // 32 GiB
	r := newRecorder(x)
	piece := int64(256 << 10)
	// The loader's first 128 reads, completing in reverse order, then the next ones.
	for i := int64(127); i >= 0; i-- {
		r.read(i*piece, piece)
	}
	r.read(600*frame+5, 4096)        // a fault far ahead: hot
	r.read(128*piece, piece)         // the loader goes on
	r.read(300*frame, 2*frame)       // a fault spanning two frames: both, in order
	r.read(600*frame+8192, 4096)     // frame 600 again: already listed
	r.read(10*frame, piece)          // behind the loader's window end: its own
	r.read(9*frame+seqWindow, piece) // at the window's end past the frontier (frame 9)
	r.read(2*frame, piece)           // behind it: not a jump
	hot, took := r.stop()
	if want := []int{600, 300, 301}; !slices.Equal(hot, want) {
		t.Fatalf("hot frames %v, want %v", hot, want)
	}
	if took <= 0 {
		t.Fatalf("recorded for %v", took)
	}
	r.read(7000*frame, 1) // after stop: not recorded
	if hot, _ := r.stop(); len(hot) != 3 {
		t.Fatalf("a read after stop was recorded: %v", hot)
	}

	// A workload touching every 10th MiB in order, the loader at frame 9: those within
	// the window do not drag the frontier along, so the rest are hot, each frame once.
	r = newRecorder(x)
	for off := int64(0); off < 9*frame; off += piece {
		r.read(off, piece)
	}
	for mib := int64(39); mib < 400; mib += 10 {
		r.read(mib<<20, 4096)
	}
	hot, _ = r.stop()
	if len(hot) == 0 || hot[0] != (109<<20)/frame || len(hot) != 30 {
		t.Fatalf("touches every 10 MiB ahead of the loader: hot %v, want the 30 frames from 109 MiB on", hot)
	}

	// The loader passes a frame it never reads (its pages were freed, or a fault loaded
	// them): once it has read on past it, its reads are still its own.
	r = newRecorder(x)
	for off := int64(0); off < 200*frame; off += piece {
		if off/frame != 20 {
			r.read(off, piece)
		}
	}
	if hot, _ = r.stop(); len(hot) != 0 {
		t.Fatalf("the loader skipping frame 20 made %d of its frames hot: %v", len(hot), hot[:min(len(hot), 8)])
	}

	// Faults that load whole frames far ahead (a model's weights, 2 MiB at a time): the
	// loader's pass skips them, and its reads after them stay its own (a frontier stuck
	// before them made every later read of the loader hot).
	for _, faulted := range [][2]int{{100, 104}, {100, 200}} {
		r = newRecorder(x)
		for off := int64(0); off < 8*frame; off += piece {
			r.read(off, piece)
		}
		for i := faulted[0]; i < faulted[1]; i++ {
			r.read(int64(i)*frame, 2<<20)
			r.read(int64(i)*frame+2<<20, 2<<20)
		}
		for off := int64(8 * frame); off < 400*frame; off += piece {
			if i := int(off / frame); i < faulted[0] || i >= faulted[1] {
				r.read(off, piece)
			}
		}
		hot, _ = r.stop()
		if want := faulted[1] - faulted[0]; len(hot) != want || hot[0] != faulted[0] {
			t.Fatalf("faults loading frames %d..%d ahead of the loader: %d hot frames (from %v), want those %d",
				faulted[0], faulted[1]-1, len(hot), hot[:min(len(hot), 8)], want)
		}
	}

	// Bounded: a workload touching everything ahead of a loader that has not moved.
	r = newRecorder(x)
	for i := x.Len() - 1; i > 0; i-- {
		r.read(int64(i)*frame, 4096)
	}
	hot, _ = r.stop()
	if len(hot) != MaxHotFrames {
		t.Fatalf("%d hot frames, want the bound %d", len(hot), MaxHotFrames)
	}
	if r := newRecorder(x); func() bool { h, d := r.stop(); return h != nil || d != 0 }() {
		t.Fatal("a recorder that saw no read returned frames or a duration")
	}
}

// TestHotListEncoding: a list round-trips; a changed byte, another pages file, frames
// out of range or listed twice, another version, no frames or too many: refused.
func TestHotListEncoding(t *testing.T) {
	x := testIndex(t, 100, 4<<20)
	data, err := EncodeHotList(x, []int{37, 5, 99, 0})
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeHotList(data, x)
	if err != nil || !slices.Equal(got, []int{37, 5, 99, 0}) {
		t.Fatalf("decode: %v, %v", got, err)
	}
	for _, bad := range [][]int{nil, {100}, {-1}, {3, 4, 3}, make([]int, MaxHotFrames+1)} {
		if _, err := EncodeHotList(x, bad); !errors.Is(err, ErrBadHotList) {
			t.Errorf("encode %v: %v, want ErrBadHotList", bad[:min(len(bad), 4)], err)
		}
	}
	// A list whose checksum is right but whose contents are not: made by hand.
	forge := func(edit func(*hotList)) []byte {
		l := identity(x)
		l.Hot = []int{1, 2}
		edit(&l)
		body, _ := json.Marshal(l)
		var obj hotObject
		obj.List = body
		sum := sha256.Sum256(body)
		obj.SHA256 = hex.EncodeToString(sum[:])
		out, _ := json.Marshal(obj)
		return out
	}
	cases := map[string][]byte{
		"a byte of the list changed": bytes.Replace(data, []byte("37"), []byte("38"), 1),
		"checksum changed":           bytes.Replace(data, []byte(`"sha256":"`), []byte(`"sha256":"0`), 1),
		"not JSON":                   []byte("hot"),
		"too large":                  make([]byte, MaxHotListBytes+1),
		"frame out of range":         forge(func(l *hotList) { l.Hot = []int{4, 100} }),
		"frame listed twice":         forge(func(l *hotList) { l.Hot = []int{4, 4} }),
		"no frames":                  forge(func(l *hotList) { l.Hot = nil }),
		"another version":            forge(func(l *hotList) { l.Version = 2 }),
		"another pages file":         forge(func(l *hotList) { l.XXH64 = "fedcba9876543210" }),
		"another frame size":         forge(func(l *hotList) { l.FrameSize = 1 << 20 }),
		"another frame count":        forge(func(l *hotList) { l.Frames = 101 }),
		"another object":             forge(func(l *hotList) { l.Pages = "pages.img.zst" }),
	}
	for name, data := range cases {
		if got, err := DecodeHotList(data, x); !errors.Is(err, ErrBadHotList) {
			t.Errorf("%s: %v, %v; want ErrBadHotList", name, got, err)
		}
	}
	if _, err := DecodeHotList(forge(func(*hotList) {}), x); err != nil {
		t.Fatalf("the forger's control case: %v", err)
	}
}

// TestFillOrderHotFirst: the fill takes the hot frames first, in the list's order (runs
// of consecutive ones together, up to a batch), skipping those there or being fetched,
// then the rest in order; hotOnly workers stop when the hot frames are taken.
func TestFillOrderHotFirst(t *testing.T) {
	f := &File{have: make([]bool, 64), busy: make([]bool, 64)}
	f.have[7] = true  // there already
	f.busy[12] = true // a reader's fetch
	c := &fillCursor{hot: []int{40, 41, 42, 7, 12, 3, 50, 52}}
	type span struct{ first, n int }
	var got []span
	for range 5 {
		first, n := f.next(c, 4, true)
		if n == 0 {
			break
		}
		got = append(got, span{first, n})
	}
	if want := []span{{40, 3}, {3, 1}, {50, 1}, {52, 1}}; !slices.Equal(got, want) {
		t.Fatalf("hot spans %v, want %v", got, want)
	}
	got = nil
	for {
		first, n := f.next(c, 4, false)
		if n == 0 {
			break
		}
		got = append(got, span{first, n})
		if len(got) == 5 {
			break
		}
	}
	if want := []span{{0, 3}, {4, 3}, {8, 4}, {13, 4}, {17, 4}}; !slices.Equal(got, want) {
		t.Fatalf("sequential spans %v, want %v", got, want)
	}
}

// orderStore records the stored offset of every ranged read of pages, in call order.
type orderStore struct {
	*testStore
	mu   sync.Mutex
	offs []int64 // guarded by mu
}

func (s *orderStore) GetRange(ctx context.Context, name string, off, n int64) (io.ReadCloser, error) {
	if strings.HasSuffix(name, PagesFile) {
		s.mu.Lock()
		s.offs = append(s.offs, off)
		s.mu.Unlock()
	}
	return s.testStore.GetRange(ctx, name, off, n)
}

// hotSource is snapshot's source with a hot-frame list object, its ranged reads recorded.
func hotSource(t *testing.T, frames int) (*orderStore, Source, []byte, *storage.FrameIndex) {
	t.Helper()
	pages := pagesData(frames * testFrame)
	ts, src := snapshot(t, storage.None{}, pages)
	ost := &orderStore{testStore: ts}
	src.Store = ost
	src.HotFrames = "s/hot-frames.json"
	x, err := storage.NewFrameIndex(src.Files[2])
	if err != nil {
		t.Fatal(err)
	}
	return ost, src, pages, x
}

// readAt reads n bytes at off of the image's pages.img through the mount.
func readAt(t *testing.T, img *Image, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join(img.Dir, PagesFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStreamRecordsHotFrames: a first restore records the frames read far ahead of the
// sequential reads, in order, and stores them as a list the next restore verifies; a
// list already there is not replaced.
func TestStreamRecordsHotFrames(t *testing.T) {
	st, src, pages, x := hotSource(t, 256)
	st.delay = 100 * time.Millisecond // the fill (8 reads of 4 frames) takes 8 rounds: the reads below come first
	checked := 0
	src.HotFramesCheck = func(context.Context) error { checked++; return nil }
	img := open(t, src)
	img.pages.rec.mu.Lock()
	img.pages.rec.window = 2 * testFrame
	img.pages.rec.mu.Unlock()
	readAt(t, img, 0, 4096)              // the loader starts
	readAt(t, img, 50*testFrame+10, 100) // a fault far ahead
	readAt(t, img, 1*testFrame, 4096)    // the loader goes on
	got := readAt(t, img, 30*testFrame, 2*testFrame)
	if !bytes.Equal(got, pages[30*testFrame:32*testFrame]) {
		t.Fatal("wrong bytes")
	}
	waitDone(t, img)
	rc, err := src.Store.Get(context.Background(), src.HotFrames)
	if err != nil {
		t.Fatalf("no list stored: %v", err)
	}
	data, _ := io.ReadAll(rc)
	rc.Close()
	hot, err := DecodeHotList(data, x)
	if want := []int{50, 30, 31}; err != nil || !slices.Equal(hot, want) {
		t.Fatalf("stored list %v (%v), want %v", hot, err, want)
	}
	if checked != 2 {
		t.Fatalf("HotFramesCheck asked %d times, want 2 (before the write and after it)", checked)
	}
}

// TestStreamFetchesHotFramesFirst: with a list stored, the fill's first ranged reads are
// the listed frames (at the end of the file, the last the sequential order would reach);
// two shims sharing the fill still download every byte once; nothing is recorded.
func TestStreamFetchesHotFramesFirst(t *testing.T) {
	st, src, pages, x := hotSource(t, 256)
	hot := []int{254, 255, 200}
	data, err := EncodeHotList(x, hot)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(context.Background(), src.HotFrames, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	st.delay = 5 * time.Millisecond
	src.HotFramesCheck = func(context.Context) error { t.Error("a list was written though one is stored"); return nil }
	a := open(t, src)
	b := open(t, src) // shares a's fill, reading while it arrives
	all, err := os.ReadFile(filepath.Join(b.Dir, PagesFile))
	if err != nil || !bytes.Equal(all, pages) {
		t.Fatalf("read through the shim sharing the fill: %v", err)
	}
	waitDone(t, a)
	waitDone(t, b)
	if all, err := os.ReadFile(filepath.Join(a.Dir, PagesFile)); err != nil || !bytes.Equal(all, pages) {
		t.Fatalf("read through the filler: %v", err)
	}
	if got, stored := st.rangeByte.Load(), src.Files[2].StoredSize; got != stored {
		t.Fatalf("ranged reads fetched %d bytes of pages, the file stores %d: not one download", got, stored)
	}
	st.mu.Lock()
	offs := slices.Clone(st.offs)
	st.mu.Unlock()
	// The first next() calls hand out the two hot reads; the sequential workers and the
	// sharer's wanted frames start alongside, the other ~60 reads after.
	first := offs[:min(len(offs), 16)]
	for _, i := range []int{254, 200} { // 255 comes with 254, in one read
		off, _ := x.Stored(i, 1)
		if !slices.Contains(first, off) {
			t.Errorf("hot frame %d (stored offset %d) was not among the first %d of %d ranged reads %v", i, off, len(first), len(offs), first)
		}
	}
}

// TestStreamIgnoresBadHotList: a list that fails its checksum is ignored: the restore
// completes in order, and the bad list is neither used nor replaced.
func TestStreamIgnoresBadHotList(t *testing.T) {
	st, src, pages, x := hotSource(t, 16)
	data, err := EncodeHotList(x, []int{15})
	if err != nil {
		t.Fatal(err)
	}
	data = bytes.Replace(data, []byte("[15]"), []byte("[14]"), 1)
	if _, err := st.Put(context.Background(), src.HotFrames, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	img := open(t, src)
	all, err := os.ReadFile(filepath.Join(img.Dir, PagesFile))
	if err != nil || !bytes.Equal(all, pages) {
		t.Fatalf("read: %v", err)
	}
	waitDone(t, img)
	if img.hotFrames(context.Background()) != nil {
		t.Fatal("the bad list was used")
	}
	rc, err := st.Get(context.Background(), src.HotFrames)
	if err != nil {
		t.Fatal(err)
	}
	back, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(back, data) {
		t.Fatal("the bad list was replaced")
	}
}

// storeHotList stores hot as src's list.
func storeHotList(t *testing.T, st *orderStore, src Source, x *storage.FrameIndex, hot []int) []byte {
	t.Helper()
	data, err := EncodeHotList(x, hot)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(context.Background(), src.HotFrames, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	return data
}

// storedHotList reads src's list back.
func storedHotList(t *testing.T, src Source, x *storage.FrameIndex) ([]byte, []int) {
	t.Helper()
	rc, err := src.Store.Get(context.Background(), src.HotFrames)
	if err != nil {
		t.Fatalf("no list stored: %v", err)
	}
	defer rc.Close()
	data, _ := io.ReadAll(rc)
	hot, err := DecodeHotList(data, x)
	if err != nil {
		t.Fatal(err)
	}
	return data, hot
}

// TestStreamAppendsToHotList: a restore that used a list and saw a frame read out of the
// loader's order that the list lacks stores the list with that frame appended; one that
// saw none beyond it leaves the list as it was; a list one frame short of half the
// frames takes one more.
func TestStreamAppendsToHotList(t *testing.T) {
	var nearlyFull []int
	for i := 129; i < 256; i++ {
		nearlyFull = append(nearlyFull, i)
	}
	for _, tc := range []struct {
		name   string
		known  []int
		faults []int64
		want   []int
	}{
		{"new frame", []int{50, 40}, []int64{50, 30}, []int{50, 40, 30}},
		{"nothing new", []int{50, 40}, []int64{50, 40}, []int{50, 40}},
		{"full", nearlyFull, []int64{50, 30}, append(slices.Clone(nearlyFull), 50)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, src, _, x := hotSource(t, 256)
			before := storeHotList(t, st, src, x, tc.known)
			st.delay = 100 * time.Millisecond
			checked := 0
			src.HotFramesCheck = func(context.Context) error { checked++; return nil }
			img := open(t, src)
			img.pages.rec.mu.Lock()
			img.pages.rec.window = 2 * testFrame
			img.pages.rec.mu.Unlock()
			readAt(t, img, 0, 4096) // the loader starts
			for i, f := range tc.faults {
				readAt(t, img, f*testFrame, 4096)
				readAt(t, img, int64(i+1)*testFrame, 4096) // the loader goes on
			}
			waitDone(t, img)
			after, hot := storedHotList(t, src, x)
			if !slices.Equal(hot, tc.want) {
				t.Fatalf("stored list %v, want %v", hot, tc.want)
			}
			if wrote := !bytes.Equal(before, after); wrote != (len(tc.want) > len(tc.known)) || checked != map[bool]int{true: 2, false: 0}[wrote] {
				t.Fatalf("list rewritten: %v, HotFramesCheck asked %d times", wrote, checked)
			}
		})
	}
}
