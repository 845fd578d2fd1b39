package storage_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podsnapshot/podsnapshot/storage"
	"github.com/podsnapshot/podsnapshot/storage/local"
)

// countingWriter counts what it is given and keeps nothing.
type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// bombSlack is how far past the declared raw size a download may write: none, since
// the bound cuts inside a write; kept as one decoder block to state the contract.
const bombSlack = 128 << 10

// TestDownloadStopsAtRawSize: a zstd object of 64 MiB of zeros (a few KiB stored) whose
// FileInfo says rawSize 4096, with stored size and CRC32C right, so only the raw size
// can stop it. Download writes at most the raw size and returns a *CorruptError naming
// the object; DownloadFile leaves no file. The same holds for an uncompressed object
// larger than its declared raw size.
func TestDownloadStopsAtRawSize(t *testing.T) {
	ctx := context.Background()
	st, err := local.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []storage.Codec{storage.Zstd{}, storage.None{}} {
		size := 64 << 20
		if c.Name() == storage.CodecNone {
			size = 1 << 20
		}
		name := "ns/pol/bomb." + c.Name()
		fi, err := storage.Upload(ctx, st, name, bytes.NewReader(make([]byte, size)), c)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d raw bytes stored as %d", c.Name(), fi.RawSize, fi.StoredSize)
		fi.RawSize = 4096
		if c.Name() == storage.CodecNone {
			fi.StoredSize = 4096 // as validated manifests say for codec none
		}

		var w countingWriter
		err = storage.Download(ctx, st, fi, &w)
		if !errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), st.URL(name)) {
			t.Fatalf("%s: Download = %v; want a corrupt error naming %s", c.Name(), err, st.URL(name))
		}
		if w.n > fi.RawSize+bombSlack {
			t.Fatalf("%s: Download wrote %d bytes for a declared raw size of %d", c.Name(), w.n, fi.RawSize)
		}
		if w.n > fi.RawSize {
			t.Errorf("%s: Download wrote %d bytes, %d past the raw size", c.Name(), w.n, w.n-fi.RawSize)
		}
		t.Logf("%s: %v (wrote %d bytes)", c.Name(), err, w.n)

		path := filepath.Join(t.TempDir(), "out")
		err = storage.DownloadFile(ctx, &noLink{st}, fi, path)
		if !errors.Is(err, storage.ErrCorrupt) {
			t.Fatalf("%s: DownloadFile = %v; want corrupt", c.Name(), err)
		}
		if _, serr := os.Stat(path); !errors.Is(serr, os.ErrNotExist) {
			t.Fatalf("%s: DownloadFile left %s: %v", c.Name(), path, serr)
		}
	}
}

// noLink hides a store's Linker, so DownloadFile copies.
type noLink struct{ storage.Store }
