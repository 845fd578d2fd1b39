package local_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podsnapshot/podsnapshot/storage"
	"github.com/podsnapshot/podsnapshot/storage/internal/storetest"
	"github.com/podsnapshot/podsnapshot/storage/local"
)

type backend struct{}

func (backend) New(t *testing.T, opts ...storage.Option) storage.Store {
	st, err := local.New(t.TempDir(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (backend) Corrupt(t *testing.T, st storage.Store, name string) {
	p := filepath.Join(st.(*local.Store).Root(), name)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	b := make([]byte, 1)
	off := fi.Size() / 2
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func (backend) RawNames(t *testing.T, st storage.Store) []string {
	root := st.(*local.Store).Root()
	var names []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, strings.TrimPrefix(p, root+"/"))
		}
		return nil
	})
	return names
}

func TestConformance(t *testing.T) { storetest.Run(t, backend{}) }

func TestOpenURL(t *testing.T) {
	dir := t.TempDir()
	for _, u := range []string{"file://" + dir, dir} {
		st, err := storage.Open(context.Background(), u)
		if err != nil {
			t.Fatalf("Open(%q): %v", u, err)
		}
		if got := st.URL("a/b"); got != "file://"+dir+"/a/b" {
			t.Errorf("URL = %q", got)
		}
		st.Close()
	}
	if _, err := storage.Open(context.Background(), "file://host/x"); err == nil {
		t.Error("file URL with a host: no error")
	}
	if _, err := storage.Open(context.Background(), "s3://b/p"); err == nil || !strings.Contains(err.Error(), "s3") {
		t.Errorf("unknown scheme: %v", err)
	}
}

// TestCrashLeavesNoObject: a temporary file from a write that never finished is not an
// object: not listed, not readable under the final name, and a later Put still works.
func TestCrashLeavesNoObject(t *testing.T) {
	dir := t.TempDir()
	st, _ := local.New(dir)
	os.MkdirAll(filepath.Join(dir, "snap"), 0o755)
	os.WriteFile(filepath.Join(dir, "snap", storage.TempPrefix+"-manifest.json-123"), []byte("half"), 0o600)
	if infos, _ := st.List(context.Background(), ""); len(infos) != 0 {
		t.Fatalf("List shows %v", infos)
	}
	if _, err := st.PutIfAbsent(context.Background(), "snap/manifest.json", strings.NewReader("{}")); err != nil {
		t.Fatal(err)
	}
}

// TestDeleteRemovesEmptyDirs keeps the tree from filling with empty snapshot directories.
func TestDeleteRemovesEmptyDirs(t *testing.T) {
	dir := t.TempDir()
	st, _ := local.New(dir)
	ctx := context.Background()
	st.Put(ctx, "ns/pol/uuid/a", strings.NewReader("a"))
	st.Put(ctx, "ns/other", strings.NewReader("b"))
	if err := st.Delete(ctx, "ns/pol/uuid/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ns", "pol")); !os.IsNotExist(err) {
		t.Errorf("empty directory ns/pol left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ns", "other")); err != nil {
		t.Errorf("sibling gone: %v", err)
	}
}

// TestDirectoriesArePrivate: snapshots hold process memory and secrets, so the store's
// root and the directories it makes are 0700 (README "Security").
func TestDirectoriesArePrivate(t *testing.T) {
	root := filepath.Join(t.TempDir(), "store")
	st, err := local.New(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(context.Background(), "ns/pol/uuid/manifest.json", strings.NewReader("{}")); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{root, filepath.Join(root, "ns"), filepath.Join(root, "ns", "pol"), filepath.Join(root, "ns", "pol", "uuid")} {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o700 {
			t.Errorf("%s: mode %o, want 700", dir, perm)
		}
	}
}
