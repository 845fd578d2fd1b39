package shaped

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/fakegcs"
	"github.com/podsnapshot/podsnapshot/storage"
	_ "github.com/podsnapshot/podsnapshot/storage/gcs" // the gs:// scheme
)

// TestStoreThroughProxy runs the shim's own store (storage/gcs) against fake-gcs-server
// through the proxy, as the lab's gcs-shaped store does: an upload, a whole read and a
// parallel ranged read (more than one read chunk) come back intact, and the reads pay
// the per-connection rate.
func TestStoreThroughProxy(t *testing.T) {
	bin, err := fakegcs.Binary()
	if err != nil {
		t.Skipf("no fake-gcs-server (make deps): %v", err)
	}
	ctx := context.Background()
	srv, err := fakegcs.Start(ctx, fakegcs.Options{Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Kill)
	if err := srv.CreateBucket(ctx, "test", "shaped"); err != nil {
		t.Fatal(err)
	}
	p, err := Start(ctx, srv.Host, Options{Latency: 10 * time.Millisecond, ConnBytesPerSec: 4e6})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	t.Setenv("STORAGE_EMULATOR_HOST", p.Addr)

	st, err := storage.Open(ctx, "gs://shaped/t", storage.WithReadChunkSize(256<<10), storage.WithParallelism(4))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: 4 read chunks
	if _, err := st.Put(ctx, "obj", bytes.NewReader(data)); err != nil {
		t.Fatalf("put through the proxy: %v", err)
	}
	t0 := time.Now()
	r, err := st.Get(ctx, "obj")
	if err != nil {
		t.Fatalf("get through the proxy: %v", err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes (%v), want the %d written", len(got), err, len(data))
	}
	// 4 ranges of 256 KiB at 4 MB/s each on their own connections: at least 65 ms.
	if d := time.Since(t0); d < 60*time.Millisecond {
		t.Errorf("the read took %v: not shaped", d)
	}
}
