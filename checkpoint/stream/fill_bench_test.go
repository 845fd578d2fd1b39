package stream

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/internal/testenv/fakegcs"
	"github.com/podsnapshot/podsnapshot/storage"
	_ "github.com/podsnapshot/podsnapshot/storage/gcs" // the gs:// scheme
	"github.com/podsnapshot/podsnapshot/storage/local"
)

// BenchmarkFill measures the shim's own part of a streaming restore's fill: 512 MiB of
// incompressible pages in frames of the default size, stored uncompressed, fetched by
// the fill's ranged reads into the node cache with nothing reading the mount, then
// fsynced and published. Its MB/s is the fill's ceiling on this machine with one
// restore's CPU to itself; profile it with
// `go test -run - -bench Fill -cpuprofile cpu.out ./checkpoint/stream`. Stores:
//   - shm: a local store in /dev/shm (memory: no store latency, no network);
//   - fake-gcs-server: the emulator on loopback through the shim's own Cloud Storage
//     client (skipped without it: make deps), whose CPU shares the machine as in the
//     bench's restores from it.
func BenchmarkFill(b *testing.B) {
	const size = 512 << 20
	pages := make([]byte, size)
	r := rand.NewChaCha8([32]byte{1})
	r.Read(pages)
	b.Run("shm", func(b *testing.B) {
		// The store on another filesystem than the cache (tmpfs): a local store on the
		// cache's filesystem would have its file linked into the cache, not fetched.
		root, err := os.MkdirTemp("/dev/shm", "fillbench-")
		if err != nil {
			b.Skipf("no /dev/shm: %v", err)
		}
		b.Cleanup(func() { os.RemoveAll(root) })
		st, err := local.New(root)
		if err != nil {
			b.Fatal(err)
		}
		benchFill(b, st, pages)
	})
	b.Run("fake-gcs-server", func(b *testing.B) {
		bin, err := fakegcs.Binary()
		if err != nil {
			b.Skipf("no fake-gcs-server (make deps): %v", err)
		}
		srv, err := fakegcs.Start(context.Background(), fakegcs.Options{Binary: bin, Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(srv.Kill)
		if err := srv.CreateBucket(context.Background(), "bench", "fill"); err != nil {
			b.Fatal(err)
		}
		b.Setenv("STORAGE_EMULATOR_HOST", srv.Host)
		st, err := storage.Open(context.Background(), "gs://fill/b")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		benchFill(b, st, pages)
	})
}

// benchFill stores pages (and two small image files) in st once, then streams them b.N
// times, each into a node cache of its own.
func benchFill(b *testing.B, st storage.Store, pages []byte) {
	ctx := context.Background()
	var files []storage.FileInfo
	for name, data := range map[string][]byte{"checkpoint.img": []byte("state"), "pages_meta.img": []byte("meta")} {
		info, err := storage.UploadFramed(ctx, st, "s/"+name, bytes.NewReader(data), storage.None{}, storage.DefaultFrameSize)
		if err != nil {
			b.Fatal(err)
		}
		files = append(files, info)
	}
	info, err := storage.UploadFramed(ctx, st, "s/pages.img", bytes.NewReader(pages), storage.None{}, storage.DefaultFrameSize)
	if err != nil {
		b.Fatal(err)
	}
	files = append(files, info)
	b.SetBytes(int64(len(pages)))
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		// Each fill in a cache of its own, removed after it: b.N of 512 MiB would not fit.
		dir, err := os.MkdirTemp(b.TempDir(), "cache-")
		if err != nil {
			b.Fatal(err)
		}
		src := Source{
			Store:     st,
			Files:     files,
			LocalName: func(o string) (string, bool) { return strings.TrimPrefix(o, "s/"), true },
			Key:       strings.Repeat("ab", 32),
			Cache:     &cache.Cache{Dir: filepath.Join(dir, "cache"), MaxBytes: 4 << 30},
		}
		b.StartTimer()
		img, err := Open(ctx, src, filepath.Join(dir, "mnt"))
		if errors.Is(err, ErrNoFUSE) {
			b.Skipf("no FUSE here: %v", err)
		}
		if err != nil {
			b.Fatal(err)
		}
		if img.Cached {
			b.Fatal("the store's file was adopted, not fetched: store and cache on one filesystem")
		}
		select {
		case <-img.Done():
		case <-time.After(time.Minute):
			b.Fatal("the fill did not end")
		}
		b.StopTimer()
		img.Close()
		if err := os.RemoveAll(dir); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
