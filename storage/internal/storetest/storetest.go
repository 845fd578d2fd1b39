// Package storetest is the conformance suite every storage.Store passes: round trips of
// many sizes, ranges, listing, replace, create-if-absent races, cancelled and failed
// uploads, and corruption detection through the Upload/Download pipeline.
package storetest

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/podsnapshot/podsnapshot/storage"
)

// Backend makes stores of one kind for the suite.
type Backend interface {
	// New returns a fresh, empty store.
	New(t *testing.T, opts ...storage.Option) storage.Store
	// Corrupt flips one byte in the middle of the stored object name, as a fault on disk
	// or in the bucket would.
	Corrupt(t *testing.T, st storage.Store, name string)
	// RawNames lists every object under the store's root, temporary ones included.
	RawNames(t *testing.T, st storage.Store) []string
}

// Sizes are the object sizes (bytes) the round-trip tests use.
var Sizes = []int{0, 1, 256<<10 - 1, 256 << 10, 256<<10 + 1, 3<<20 + 12345}

// BigSize is the size of the large random round trip (bytes).
const BigSize = 100 << 20

// Run runs the whole suite against b.
func Run(t *testing.T, b Backend) {
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, b) })
	t.Run("RoundTripBig", func(t *testing.T) { testRoundTripBig(t, b) })
	t.Run("Pipeline", func(t *testing.T) { testPipeline(t, b) })
	t.Run("Ranges", func(t *testing.T) { testRanges(t, b) })
	t.Run("List", func(t *testing.T) { testList(t, b) })
	t.Run("Replace", func(t *testing.T) { testReplace(t, b) })
	t.Run("Missing", func(t *testing.T) { testMissing(t, b) })
	t.Run("BadNames", func(t *testing.T) { testBadNames(t, b) })
	t.Run("PutIfAbsentRace", func(t *testing.T) { testPutIfAbsentRace(t, b) })
	t.Run("CancelledUpload", func(t *testing.T) { testCancelledUpload(t, b) })
	t.Run("FailedUpload", func(t *testing.T) { testFailedUpload(t, b) })
	t.Run("Corrupt", func(t *testing.T) { testCorrupt(t, b) })
}

// Random returns n pseudo-random bytes from seed.
func Random(n int, seed uint64) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)}).Read(b)
	return b
}

// Text returns n bytes of compressible text from seed.
func Text(n int, seed uint64) []byte {
	words := strings.Fields("the quick brown fox jumps over a lazy dog while page tables " +
		"and kernel stacks hold pointers 0x7f3a00 0x7f3a08 into heap arenas of the runtime")
	r := rand.New(rand.NewPCG(seed, 1))
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		b.WriteByte(" \n"[r.IntN(8)/7])
	}
	return b.Bytes()[:n]
}

func put(t *testing.T, st storage.Store, name string, data []byte) storage.ObjectInfo {
	t.Helper()
	info, err := st.Put(context.Background(), name, bytes.NewReader(data))
	if err != nil {
		t.Fatalf("Put %s: %v", name, err)
	}
	if info.Size != int64(len(data)) {
		t.Fatalf("Put %s: size %d, want %d", name, info.Size, len(data))
	}
	if want := crc32.Checksum(data, storage.Castagnoli); !info.HasCRC32C || info.CRC32C != want {
		t.Fatalf("Put %s: crc32c %d (has %v), want %d", name, info.CRC32C, info.HasCRC32C, want)
	}
	return info
}

func get(t *testing.T, st storage.Store, name string) []byte {
	t.Helper()
	rc, err := st.Get(context.Background(), name)
	if err != nil {
		t.Fatalf("Get %s: %v", name, err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Get %s: read: %v", name, err)
	}
	return got
}

func assertNoTemps(t *testing.T, b Backend, st storage.Store) {
	t.Helper()
	for _, n := range b.RawNames(t, st) {
		if storage.IsTemp(n) {
			t.Errorf("temporary object left behind: %s", n)
		}
	}
}

func testRoundTrip(t *testing.T, b Backend) {
	st := b.New(t)
	for i, size := range Sizes {
		name := fmt.Sprintf("rt/%d.bin", size)
		data := Random(size, uint64(i))
		info := put(t, st, name, data)
		if got := get(t, st, name); !bytes.Equal(got, data) {
			t.Fatalf("%s: Get returned %d bytes differing from the %d put", name, len(got), len(data))
		}
		si, err := st.Stat(context.Background(), name)
		if err != nil || si.Size != info.Size || si.CRC32C != info.CRC32C || si.Name != name {
			t.Fatalf("Stat %s = %+v, %v; want %+v", name, si, err, info)
		}
	}
	assertNoTemps(t, b, st)
}

func testRoundTripBig(t *testing.T, b Backend) {
	if testing.Short() {
		t.Skip("100 MiB round trip skipped in -short mode")
	}
	st := b.New(t)
	data := Random(BigSize, 42)
	put(t, st, "big.bin", data)
	if got := get(t, st, "big.bin"); !bytes.Equal(got, data) {
		t.Fatalf("big.bin: Get returned %d bytes differing from the %d put", len(got), len(data))
	}
	assertNoTemps(t, b, st)
}

// testPipeline runs Upload and Download with both codecs on random and compressible data.
func testPipeline(t *testing.T, b Backend) {
	st := b.New(t)
	ctx := context.Background()
	inputs := map[string][]byte{
		"empty": nil, "one": {7}, "random": Random(1<<20+3, 5), "text": Text(8<<20, 6),
	}
	codecs := []storage.Codec{storage.None{}, storage.Zstd{Level: 1}, storage.Zstd{Level: 3, Concurrency: 1}}
	for in, data := range inputs {
		for _, c := range codecs {
			name := fmt.Sprintf("pipe/%s.%s", in, c.Name())
			fi, err := storage.Upload(ctx, st, name, bytes.NewReader(data), c)
			if err != nil {
				t.Fatalf("Upload %s: %v", name, err)
			}
			sum := xxhash.New()
			sum.Write(data)
			if fi.Name != name || fi.RawSize != int64(len(data)) || fi.XXH64 != hex.EncodeToString(sum.Sum(nil)) || fi.Codec != c.Name() {
				t.Fatalf("Upload %s: FileInfo %+v", name, fi)
			}
			if in == "text" && c.Name() == "zstd" && fi.StoredSize*3 > fi.RawSize {
				t.Errorf("Upload %s: text compressed only to %d of %d bytes", name, fi.StoredSize, fi.RawSize)
			}
			var out bytes.Buffer
			if err := storage.Download(ctx, st, fi, &out); err != nil {
				t.Fatalf("Download %s: %v", name, err)
			}
			if !bytes.Equal(out.Bytes(), data) {
				t.Fatalf("Download %s: %d bytes differ from the %d uploaded", name, out.Len(), len(data))
			}
		}
	}
}

func testRanges(t *testing.T, b Backend) {
	st := b.New(t)
	data := Random(1<<20, 9)
	put(t, st, "r.bin", data)
	for _, rg := range []struct{ off, n int64 }{{0, 1}, {0, -1}, {1000, 5000}, {1<<20 - 1, 1}, {1<<20 - 10, 100}, {1 << 20, -1}, {500, 0}} {
		rc, err := st.GetRange(context.Background(), "r.bin", rg.off, rg.n)
		if err != nil {
			t.Fatalf("GetRange(%d, %d): %v", rg.off, rg.n, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		end := int64(len(data))
		if rg.n >= 0 {
			end = min(rg.off+rg.n, end)
		}
		if err != nil || !bytes.Equal(got, data[rg.off:end]) {
			t.Fatalf("GetRange(%d, %d): %d bytes, %v; want %d bytes", rg.off, rg.n, len(got), err, end-rg.off)
		}
	}
	if _, err := st.GetRange(context.Background(), "r.bin", 1<<20+1, 1); !errors.Is(err, storage.ErrOutOfRange) {
		t.Fatalf("GetRange past the end: %v, want an error wrapping ErrOutOfRange", err)
	}
}

func testList(t *testing.T, b Backend) {
	st := b.New(t)
	names := []string{"a/b/1", "a/b/2", "a/c", "ab", "z"}
	for _, n := range names {
		put(t, st, n, []byte(n))
	}
	for prefix, want := range map[string][]string{
		"": names, "a/": {"a/b/1", "a/b/2", "a/c"}, "a/b": {"a/b/1", "a/b/2"}, "a": {"a/b/1", "a/b/2", "a/c", "ab"},
		"a/b/1": {"a/b/1"}, "nope": nil, "nope/": nil,
	} {
		infos, err := st.List(context.Background(), prefix)
		if err != nil {
			t.Fatalf("List(%q): %v", prefix, err)
		}
		var got []string
		for _, in := range infos {
			got = append(got, in.Name)
			if in.Size != int64(len(in.Name)) || in.Updated.IsZero() {
				t.Errorf("List(%q): %+v: wrong size or no time", prefix, in)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("List(%q) = %v, want %v", prefix, got, want)
		}
	}
	if infos, err := st.List(context.Background(), "../"); err == nil && len(infos) > 0 {
		t.Errorf("List(../) = %v: escaped the root", infos)
	}
}

func testReplace(t *testing.T, b Backend) {
	st := b.New(t)
	put(t, st, "x", []byte("first"))
	put(t, st, "x", []byte("second, longer"))
	if got := get(t, st, "x"); string(got) != "second, longer" {
		t.Fatalf("after replace: %q", got)
	}
	if err := st.Delete(context.Background(), "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Stat(context.Background(), "x"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat after Delete: %v, want ErrNotFound", err)
	}
}

func testMissing(t *testing.T, b Backend) {
	st := b.New(t)
	ctx := context.Background()
	url := st.URL("no/such")
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, storage.ErrNotFound) || !strings.Contains(err.Error(), url) {
			t.Errorf("%s of a missing object: %v; want ErrNotFound naming %s", op, err, url)
		}
	}
	_, err := st.Get(ctx, "no/such")
	check("Get", err)
	_, err = st.GetRange(ctx, "no/such", 0, 1)
	check("GetRange", err)
	_, err = st.Stat(ctx, "no/such")
	check("Stat", err)
	check("Delete", st.Delete(ctx, "no/such"))
	check("Download", storage.Download(ctx, st, storage.FileInfo{Name: "no/such", Codec: "zstd"}, io.Discard))
}

func testBadNames(t *testing.T, b Backend) {
	st := b.New(t)
	for _, n := range []string{"", "/abs", "a//b", "a/../b", "./a", "a/", storage.TempPrefix + "-x", "a/" + storage.TempPrefix, "a\nb"} {
		if _, err := st.Put(context.Background(), n, strings.NewReader("x")); err == nil {
			t.Errorf("Put(%q): no error", n)
		}
	}
}

// testPutIfAbsentRace starts writers of one name at once, several times: exactly one wins,
// the others get ErrExists with "already exists" and the object URL, and the object holds
// the winner's bytes.
func testPutIfAbsentRace(t *testing.T, b Backend) {
	st := b.New(t)
	const writers = 6
	for round := range 5 {
		name := fmt.Sprintf("ns/policy/snap-%d/manifest.json", round)
		var wg sync.WaitGroup
		errs := make([]error, writers)
		start := make(chan struct{})
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, errs[w] = st.PutIfAbsent(context.Background(), name, strings.NewReader(fmt.Sprintf(`{"writer":%d}`, w)))
			}()
		}
		close(start)
		wg.Wait()
		winner := -1
		for w, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("%s: writers %d and %d both won", name, winner, w)
			case err == nil:
				winner = w
			case !errors.Is(err, storage.ErrExists) || !strings.Contains(err.Error(), "already exists") || !strings.Contains(err.Error(), st.URL(name)):
				t.Fatalf("%s: loser %d: %v; want ErrExists naming the object", name, w, err)
			}
		}
		if winner < 0 {
			t.Fatalf("%s: no writer won: %v", name, errs)
		}
		if got, want := string(get(t, st, name)), fmt.Sprintf(`{"writer":%d}`, winner); got != want {
			t.Fatalf("%s holds %q, want the winner's %q", name, got, want)
		}
	}
	assertNoTemps(t, b, st)
}

// stream yields size pseudo-random bytes, calling at(n) once n bytes have been read.
type stream struct {
	size, n, fired int
	at             func()
	rng            *rand.ChaCha8
	err            error // returned after failAt bytes, if set
	failAt         int
}

func (s *stream) Read(p []byte) (int, error) {
	if s.err != nil && s.n >= s.failAt {
		return 0, s.err
	}
	if s.n >= s.size {
		return 0, io.EOF
	}
	p = p[:min(len(p), s.size-s.n, 64<<10)]
	s.rng.Read(p)
	s.n += len(p)
	if s.at != nil && s.n >= s.fired && s.fired > 0 {
		s.at()
		s.at = nil
	}
	return len(p), nil
}

func testCancelledUpload(t *testing.T, b Backend) {
	st := b.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	src := &stream{size: 64 << 20, fired: 3 << 20, at: cancel, rng: rand.NewChaCha8([32]byte{1})}
	_, err := storage.Upload(ctx, st, "snap/pages.img.zst", src, storage.Zstd{Level: 1})
	if err == nil {
		t.Fatal("Upload with a cancelled context: no error")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Upload: %v, want context.Canceled", err)
	}
	if _, err := st.Stat(context.Background(), "snap/pages.img.zst"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("after cancelled Upload, Stat: %v; want ErrNotFound", err)
	}
	assertNoTemps(t, b, st)
	if names := b.RawNames(t, st); len(names) != 0 {
		t.Errorf("after cancelled Upload the store holds %v", names)
	}
}

func testFailedUpload(t *testing.T, b Backend) {
	st := b.New(t)
	boom := errors.New("disk on fire")
	for _, c := range []storage.Codec{storage.None{}, storage.Zstd{Level: 3}} {
		src := &stream{size: 64 << 20, err: boom, failAt: 5<<20 + 7, rng: rand.NewChaCha8([32]byte{2})}
		_, err := storage.Upload(context.Background(), st, "snap/pages.img", src, c)
		if !errors.Is(err, boom) || !strings.Contains(err.Error(), st.URL("snap/pages.img")) {
			t.Fatalf("Upload from a failing source (%s): %v; want the source's error naming the object", c.Name(), err)
		}
		if _, err := st.Stat(context.Background(), "snap/pages.img"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("after failed Upload, Stat: %v; want ErrNotFound", err)
		}
	}
	if names := b.RawNames(t, st); len(names) != 0 {
		t.Errorf("after failed Uploads the store holds %v", names)
	}
}

// testCorrupt flips a byte of stored objects and expects Download to say ErrCorrupt,
// naming the object.
func testCorrupt(t *testing.T, b Backend) {
	st := b.New(t)
	ctx := context.Background()
	for _, c := range []storage.Codec{storage.None{}, storage.Zstd{Level: 1}} {
		name := "snap/checkpoint.img." + c.Name()
		fi, err := storage.Upload(ctx, st, name, bytes.NewReader(Text(2<<20, 3)), c)
		if err != nil {
			t.Fatal(err)
		}
		b.Corrupt(t, st, name)
		err = storage.Download(ctx, st, fi, io.Discard)
		if !errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), st.URL(name)) {
			t.Fatalf("Download of corrupted %s: %v; want ErrCorrupt naming the object", name, err)
		}
		t.Logf("corrupted %s: %v", c.Name(), err)
	}
	// A FileInfo that disagrees with an intact object is also caught.
	fi, err := storage.Upload(ctx, st, "snap/ok", bytes.NewReader(Text(1<<20, 4)), storage.Zstd{})
	if err != nil {
		t.Fatal(err)
	}
	for _, mut := range []func(*storage.FileInfo){
		func(f *storage.FileInfo) { f.CRC32C++ },
		func(f *storage.FileInfo) { f.RawSize++ },
		func(f *storage.FileInfo) { f.XXH64 = strings.Repeat("0", 16) },
	} {
		bad := fi
		mut(&bad)
		if err := storage.Download(ctx, st, bad, io.Discard); !errors.Is(err, storage.ErrCorrupt) {
			t.Errorf("Download with wrong FileInfo %+v: %v; want ErrCorrupt", bad, err)
		}
	}
}
