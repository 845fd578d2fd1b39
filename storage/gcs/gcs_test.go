package gcs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	gcs "cloud.google.com/go/storage"
	"github.com/podsnapshot/podsnapshot/internal/testenv/fakegcs"
	"github.com/podsnapshot/podsnapshot/storage"
	gcsstore "github.com/podsnapshot/podsnapshot/storage/gcs"
	"github.com/podsnapshot/podsnapshot/storage/internal/storetest"
	"google.golang.org/api/iterator"
)

const bucket = "snapshots"

var (
	client  *gcs.Client
	prefixN atomic.Int64
)

// TestMain runs fake-gcs-server on 127.0.0.1 for the whole package and points the client
// at it through STORAGE_EMULATOR_HOST, as the store does in production with the emulator.
func TestMain(m *testing.M) {
	ctx := context.Background()
	srv, err := fakegcs.Start(ctx, fakegcs.Options{Log: os.Stderr})
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: storage/gcs tests need fake-gcs-server: %v\n", err)
		os.Exit(1)
	}
	os.Setenv("STORAGE_EMULATOR_HOST", srv.Host)
	client, err = gcs.NewClient(ctx)
	if err == nil {
		err = client.Bucket(bucket).Create(ctx, "test", nil)
	}
	code := 1
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: fake-gcs-server at %s: %v\n", srv.Host, err)
	} else {
		code = m.Run()
		client.Close()
	}
	srv.Kill()
	os.Exit(code)
}

type backend struct{}

// New returns a store on a fresh prefix with small parts (256 KiB) and read chunks
// (512 KiB), so the suite's sizes cross part boundaries and compose trees.
func (backend) New(t *testing.T, opts ...storage.Option) storage.Store {
	prefix := fmt.Sprintf("t%d/%s", prefixN.Add(1), strings.ReplaceAll(t.Name(), "/", "-"))
	opts = append([]storage.Option{storage.WithPartSize(256 << 10), storage.WithReadChunkSize(512 << 10), storage.WithParallelism(4)}, opts...)
	st, err := storage.Open(context.Background(), "gs://"+bucket+"/"+prefix, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func key(st storage.Store, name string) string {
	return strings.TrimPrefix(st.URL(name), "gs://"+bucket+"/")
}

// Corrupt rewrites the object with one byte flipped; the server computes a new CRC32C,
// as it would for an object overwritten behind our back.
func (backend) Corrupt(t *testing.T, st storage.Store, name string) {
	ctx := context.Background()
	obj := client.Bucket(bucket).Object(key(st, name))
	r, err := obj.NewReader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x40
	w := obj.NewWriter(ctx)
	w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func (backend) RawNames(t *testing.T, st storage.Store) []string {
	return rawNames(t, key(st, "")+"/")
}

func rawNames(t *testing.T, prefix string) []string {
	var names []string
	it := client.Bucket(bucket).Objects(context.Background(), &gcs.Query{Prefix: prefix})
	for {
		a, err := it.Next()
		if err == iterator.Done {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, strings.TrimPrefix(a.Name, prefix))
	}
}

func TestConformance(t *testing.T) { storetest.Run(t, backend{}) }

// TestComposeTree uploads 1100 parts, which takes three compose levels (1100 -> 35 -> 2 -> 1).
func TestComposeTree(t *testing.T) {
	st := backend{}.New(t, storage.WithPartSize(4<<10), storage.WithParallelism(8))
	data := storetest.Random(1100*4<<10-17, 11)
	info, err := st.Put(context.Background(), "tree.bin", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != int64(len(data)) {
		t.Fatalf("size %d, want %d", info.Size, len(data))
	}
	a, err := client.Bucket(bucket).Object(key(st, "tree.bin")).Attrs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("composed object: %d bytes, component count %d", a.Size, a.ComponentCount)
	r, err := st.Get(context.Background(), "tree.bin")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes (%v), differ from %d put", len(got), err, len(data))
	}
	if names := (backend{}).RawNames(t, st); len(names) != 1 {
		t.Fatalf("objects after the upload: %v, want only tree.bin", names)
	}
}

// TestNew covers a store made from the caller's client, with an empty prefix.
func TestNew(t *testing.T) {
	st := gcsstore.New(client, bucket, "")
	defer st.Close()
	if got := st.URL("x/y"); got != "gs://"+bucket+"/x/y" {
		t.Fatalf("URL = %q", got)
	}
	name := fmt.Sprintf("rootless-%d", prefixN.Add(1))
	if _, err := st.Put(context.Background(), name, strings.NewReader("hi")); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(context.Background(), name); err != nil {
		t.Fatal(err)
	}
}

// TestPutIfAbsentComposite: a multi-part create-if-absent of an existing name fails with
// ErrExists before uploading anything, and one of a new name succeeds.
func TestPutIfAbsentComposite(t *testing.T) {
	st := backend{}.New(t, storage.WithPartSize(64<<10))
	ctx := context.Background()
	data := storetest.Random(1<<20, 12)
	if _, err := st.PutIfAbsent(ctx, "m", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(data)
	_, err := st.PutIfAbsent(ctx, "m", r)
	if !errors.Is(err, storage.ErrExists) || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second PutIfAbsent: %v; want ErrExists", err)
	}
	if r.Len() != len(data) {
		t.Errorf("second PutIfAbsent read %d bytes before failing", len(data)-r.Len())
	}
	if names := (backend{}).RawNames(t, st); len(names) != 1 {
		t.Errorf("objects: %v, want only m", names)
	}
}
