package storage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/podsnapshot/podsnapshot/storage"
	"github.com/podsnapshot/podsnapshot/storage/internal/storetest"
	"github.com/podsnapshot/podsnapshot/storage/local"
)

// TestFramedRoundTrip: a framed upload downloads whole as an unframed one does, and every
// range of frames reads back the raw bytes, for both codecs and a last frame shorter than
// the others.
func TestFramedRoundTrip(t *testing.T) {
	ctx := context.Background()
	st, err := local.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const frame = 64 << 10
	data := append(storetest.Text(10*frame, 1), storetest.Random(3*frame+777, 2)...)
	for _, codec := range []storage.Codec{storage.Zstd{}, storage.None{}} {
		name := "f/" + codec.Name()
		info, err := storage.UploadFramed(ctx, st, name, bytes.NewReader(data), codec, frame)
		if err != nil {
			t.Fatal(err)
		}
		if info.FrameSize != frame || len(info.Frames) != 14 || info.RawSize != int64(len(data)) {
			t.Fatalf("%s: frameSize %d, %d frames, raw %d", codec.Name(), info.FrameSize, len(info.Frames), info.RawSize)
		}
		var whole bytes.Buffer
		if err := storage.Download(ctx, st, info, &whole); err != nil || !bytes.Equal(whole.Bytes(), data) {
			t.Fatalf("%s: whole download: %v, equal %v", codec.Name(), err, bytes.Equal(whole.Bytes(), data))
		}
		x, err := storage.NewFrameIndex(info)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range [][2]int{{0, 14}, {3, 1}, {13, 1}, {9, 3}} {
			var got []byte
			err := storage.ReadFrames(ctx, st, x, r[0], r[1], nil, func(i int, raw []byte) error {
				got = append(got, raw...)
				return nil
			})
			want := data[x.RawOffset(r[0]) : x.RawOffset(r[0])+int64(len(got))]
			if err != nil || !bytes.Equal(got, want) || int64(len(got)) != sumRaw(x, r[0], r[1]) {
				t.Fatalf("%s: frames %v: %v, %d bytes, equal %v", codec.Name(), r, err, len(got), bytes.Equal(got, want))
			}
		}
	}
}

func sumRaw(x *storage.FrameIndex, first, n int) (s int64) {
	for i := first; i < first+n; i++ {
		s += x.RawLen(i)
	}
	return s
}

// TestFramedCorrupt: a flipped stored byte is a CorruptError naming the frame, and the
// frames before it were delivered.
func TestFramedCorrupt(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st, _ := local.New(root)
	const frame = 32 << 10
	data := storetest.Text(8*frame, 3)
	info, err := storage.UploadFramed(ctx, st, "c/pages.img.zst", bytes.NewReader(data), storage.Zstd{}, frame)
	if err != nil {
		t.Fatal(err)
	}
	x, _ := storage.NewFrameIndex(info)
	off, _ := x.Stored(5, 1)
	path := filepath.Join(root, "c/pages.img.zst")
	b, _ := os.ReadFile(path)
	b[off+10] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	var seen []int
	err = storage.ReadFrames(ctx, st, x, 0, 8, nil, func(i int, raw []byte) error { seen = append(seen, i); return nil })
	var ce *storage.CorruptError
	if !errors.As(err, &ce) || len(seen) != 5 {
		t.Fatalf("ReadFrames = %v (frames delivered %v); want a CorruptError after frames 0-4", err, seen)
	}
	if want := "frame 5: crc32c mismatch"; !bytes.Contains([]byte(err.Error()), []byte(want)) {
		t.Fatalf("error %q does not say %q", err, want)
	}
}

// TestFramedTruncated: an object cut short is corrupt at once, naming the frame, whether
// the cut falls inside the frames read or before their first byte (the store's
// ErrOutOfRange), for both codecs; nothing to retry.
func TestFramedTruncated(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st, _ := local.New(root)
	const frame = 32 << 10
	for _, codec := range []storage.Codec{storage.Zstd{}, storage.None{}} {
		name := "t/pages.img." + codec.Name()
		info, err := storage.UploadFramed(ctx, st, name, bytes.NewReader(storetest.Random(8*frame, 4)), codec, frame)
		if err != nil {
			t.Fatal(err)
		}
		x, _ := storage.NewFrameIndex(info)
		half, _ := x.Stored(4, 1)
		if err := os.Truncate(filepath.Join(root, name), half-100); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct{ first, want int }{{2, 3}, {6, 6}} {
			err := storage.ReadFrames(ctx, st, x, c.first, 2, nil, func(int, []byte) error { return nil })
			want := fmt.Sprintf("frame %d: object ends", c.want)
			if !errors.Is(err, storage.ErrCorrupt) || !bytes.Contains([]byte(err.Error()), []byte(want)) {
				t.Errorf("%s: frames %d-%d of a truncated object: %v; want corrupt, %q", codec.Name(), c.first, c.first+1, err, want)
			}
		}
	}
}

// TestFrameIndexRefuses: inconsistent frame lists are refused naming the object.
func TestFrameIndexRefuses(t *testing.T) {
	good := storage.FileInfo{Name: "p", RawSize: 10, StoredSize: 10, Codec: "none", FrameSize: 4,
		Frames: []storage.Frame{{Size: 4}, {Size: 4}, {Size: 2}}}
	if _, err := storage.NewFrameIndex(good); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*storage.FileInfo){
		"count":      func(f *storage.FileInfo) { f.Frames = f.Frames[:2] },
		"sum":        func(f *storage.FileInfo) { f.StoredSize = 11 },
		"none sizes": func(f *storage.FileInfo) { f.Frames = []storage.Frame{{Size: 3}, {Size: 5}, {Size: 2}} },
		"frame size": func(f *storage.FileInfo) { f.FrameSize = storage.MaxFrameSize + 1 },
		// A zstd frame claiming 1 TiB: refused before a reader allocates a buffer for it.
		"stored frame": func(f *storage.FileInfo) {
			f.Codec, f.Frames[2].Size, f.StoredSize = "zstd", 1<<40, 8+1<<40
		},
	} {
		f := good
		f.Frames = append([]storage.Frame(nil), good.Frames...)
		mut(&f)
		if _, err := storage.NewFrameIndex(f); err == nil || !bytes.HasPrefix([]byte(err.Error()), []byte("p: ")) {
			t.Errorf("%s: NewFrameIndex = %v, want an error naming p", name, err)
		}
	}
}

// TestAdoptFramed: an uncompressed file on the store's filesystem becomes the object
// itself (same inode, nothing copied) with the FileInfo an upload would record; one on
// another filesystem is not adopted and nothing is stored.
func TestAdoptFramed(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st, _ := local.New(filepath.Join(root, "store"))
	data := storetest.Random(5*64<<10+3, 9)
	path := filepath.Join(root, "pages.img")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	info, ok, err := storage.AdoptFramed(ctx, st, "a/pages.img", path, 64<<10)
	if err != nil || !ok {
		t.Fatalf("AdoptFramed: ok %v, %v", ok, err)
	}
	want, err := storage.UploadFramed(ctx, st, "b/pages.img", bytes.NewReader(data), storage.None{}, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	want.Name = info.Name
	if fmt.Sprint(info) != fmt.Sprint(want) {
		t.Fatalf("adopted %+v\nuploaded %+v", info, want)
	}
	a, _ := os.Stat(path)
	b, _ := os.Stat(filepath.Join(root, "store/a/pages.img"))
	if !os.SameFile(a, b) {
		t.Fatal("the object is a copy, not the file")
	}
	obj, err := st.Stat(ctx, "a/pages.img")
	if err != nil || !obj.HasCRC32C || obj.CRC32C != info.CRC32C {
		t.Fatalf("store's CRC32C: %+v, %v", obj, err)
	}
	shm, err := os.CreateTemp("/dev/shm", "adopt-")
	if err != nil {
		t.Skip("no /dev/shm")
	}
	defer os.Remove(shm.Name())
	shm.Write(data)
	shm.Close()
	if _, ok, err := storage.AdoptFramed(ctx, st, "c/pages.img", shm.Name(), 64<<10); ok || err != nil {
		t.Fatalf("a file on tmpfs: ok %v, %v; want not adopted", ok, err)
	}
	if _, err := st.Stat(ctx, "c/pages.img"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a refused adoption left an object: %v", err)
	}
}
