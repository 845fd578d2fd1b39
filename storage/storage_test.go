package storage_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/podsnapshot/podsnapshot/storage"
	"github.com/podsnapshot/podsnapshot/storage/internal/storetest"
	"github.com/podsnapshot/podsnapshot/storage/local"
)

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"a", "ns/policy/0f1e/pages.img.zst", "a.b/c-d_e", "ünïcode"} {
		if err := storage.CheckName(ok); err != nil {
			t.Errorf("CheckName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "/a", "a/", "a//b", ".", "..", "a/./b", "a/../b", "x\x00", storage.TempPrefix, "a/" + storage.TempPrefix + "-1/b", strings.Repeat("a", 1025)} {
		if err := storage.CheckName(bad); err == nil {
			t.Errorf("CheckName(%q): no error", bad)
		}
	}
}

func TestOpenUnknown(t *testing.T) {
	_, err := storage.Open(context.Background(), "gs://bucket/p")
	if err == nil || !strings.Contains(err.Error(), "storage/gcs") {
		t.Errorf("Open gs:// without the gcs package: %v; want a hint to import it", err)
	}
	if _, err := storage.Open(context.Background(), "relative/path"); err == nil {
		t.Error("Open of a relative path: no error")
	}
}

func TestCodecByName(t *testing.T) {
	for _, n := range []string{"zstd", "none", "flate"} {
		c, err := storage.CodecByName(n)
		if err != nil || c.Name() != n {
			t.Errorf("CodecByName(%q) = %v, %v", n, c, err)
		}
	}
	if _, err := storage.CodecByName("lz4"); err == nil {
		t.Error("CodecByName(lz4): no error")
	}
}

// lyingStore reports a CRC32C that is not that of the bytes it stored.
type lyingStore struct {
	storage.Store
	deleted []string
}

func (s *lyingStore) Put(ctx context.Context, name string, r io.Reader) (storage.ObjectInfo, error) {
	info, err := s.Store.Put(ctx, name, r)
	info.CRC32C++
	return info, err
}

func (s *lyingStore) Delete(ctx context.Context, name string) error {
	s.deleted = append(s.deleted, name)
	return s.Store.Delete(ctx, name)
}

func TestUploadChecksStoreCRC(t *testing.T) {
	st, _ := local.New(t.TempDir())
	ls := &lyingStore{Store: st}
	_, err := storage.Upload(context.Background(), ls, "f", bytes.NewReader(storetest.Text(1<<20, 1)), storage.Zstd{})
	if !errors.Is(err, storage.ErrCorrupt) || len(ls.deleted) != 1 {
		t.Fatalf("Upload to a store reporting a wrong crc32c: %v (deleted %v); want ErrCorrupt and the object deleted", err, ls.deleted)
	}
}

// TestDownloadTruncated: a stored object cut short is caught, whatever the codec.
func TestDownloadTruncated(t *testing.T) {
	ctx := context.Background()
	st, _ := local.New(t.TempDir())
	for _, c := range []storage.Codec{storage.None{}, storage.Zstd{}} {
		fi, err := storage.Upload(ctx, st, "f."+c.Name(), bytes.NewReader(storetest.Text(1<<20, 2)), c)
		if err != nil {
			t.Fatal(err)
		}
		rc, _ := st.GetRange(ctx, fi.Name, 0, fi.StoredSize/2)
		half, _ := io.ReadAll(rc)
		rc.Close()
		if _, err := st.Put(ctx, fi.Name, bytes.NewReader(half)); err != nil {
			t.Fatal(err)
		}
		err = storage.Download(ctx, st, fi, io.Discard)
		if !errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), st.URL(fi.Name)) {
			t.Errorf("Download of truncated %s: %v; want ErrCorrupt naming the object", c.Name(), err)
		}
	}
}

// TestCorruptErrorText pins the error format other packages and operators rely on.
func TestCorruptErrorText(t *testing.T) {
	err := storage.Corruptf("gs://b/p/pages.img.zst", "crc32c mismatch: got %d, want %d", 1234, 5678)
	if err.Error() != "gs://b/p/pages.img.zst: crc32c mismatch: got 1234, want 5678" || !errors.Is(err, storage.ErrCorrupt) {
		t.Errorf("%v", err)
	}
}
