package harness

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestGatedDirHolds: a read of the held range of the gated file waits until release;
// reads elsewhere, and of other files, pass at once; a change to the backing file is seen
// through the mount at once.
func TestGatedDirHolds(t *testing.T) {
	root := t.TempDir()
	g := NewGatedDir(t, filepath.Join(root, "mnt"), filepath.Join(root, "backing"))
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(g.Backing, "ns/p"), 0o755))
	must(os.WriteFile(filepath.Join(g.Backing, "ns/p/pages.img"), data, 0o644))
	release := g.Hold("ns/p/pages.img", 512<<10, 600<<10)
	f, err := os.Open(filepath.Join(g.Dir, "ns/p/pages.img"))
	must(err)
	defer f.Close()
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 0); err != nil || buf[1] != 1 {
		t.Fatalf("read outside the held range: %v", err)
	}
	got := make(chan error, 1)
	go func() { _, err := f.ReadAt(buf, 520<<10); got <- err }()
	select {
	case err := <-got:
		t.Fatalf("a read of the held range returned at once: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	release()
	select {
	case err := <-got:
		must(err)
	case <-time.After(5 * time.Second):
		t.Fatal("the held read did not return after release")
	}
	must(os.Truncate(filepath.Join(g.Backing, "ns/p/pages.img"), 1000))
	if fi, err := os.Stat(filepath.Join(g.Dir, "ns/p/pages.img")); err != nil || fi.Size() != 1000 {
		t.Fatalf("size through the mount after a truncate: %v, %v", fi, err)
	}
}
