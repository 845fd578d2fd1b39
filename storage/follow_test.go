package storage

import (
	"os"
	"path/filepath"
	"testing"
)

// TestFollowerPasses: each pass hands the whole MiB written since the last to writeback,
// and a file emptied and written again is followed from its start.
func TestFollowerPasses(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pages.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := &follower{dir: dir, files: map[string]*followed{}}
	defer w.close()
	flushed := func() int64 {
		if fl := w.files["pages.img"]; fl != nil {
			return fl.flushed
		}
		return -1
	}
	write := func(n int) {
		if _, err := f.Write(make([]byte, n)); err != nil {
			t.Fatal(err)
		}
	}
	write(3<<20 + 1000)
	w.pass()
	if w.off {
		t.Skip("sync_file_range refused on this filesystem")
	}
	if got := flushed(); got != 3<<20 {
		t.Fatalf("flushed %d after 3 MiB + 1000 bytes, want 3 MiB", got)
	}
	write(1 << 20)
	w.pass()
	if got := flushed(); got != 4<<20 {
		t.Fatalf("flushed %d after 4 MiB + 1000 bytes, want 4 MiB", got)
	}
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		t.Fatal(err)
	}
	write(2 << 20)
	w.pass()
	if got := flushed(); got != 2<<20 {
		t.Fatalf("flushed %d after the file was emptied and 2 MiB written, want 2 MiB", got)
	}
}

// TestFollowWriteback: following a directory while a file is written in pieces ends
// cleanly, with the file whole; a directory that is not there is not followed.
func TestFollowWriteback(t *testing.T) {
	dir := t.TempDir()
	stop := FollowWriteback(dir)
	f, err := os.Create(filepath.Join(dir, "pages.img"))
	if err != nil {
		t.Fatal(err)
	}
	piece := make([]byte, 256<<10)
	for range 40 {
		if _, err := f.Write(piece); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	stop()
	stop() // twice is fine
	if st, err := os.Stat(filepath.Join(dir, "pages.img")); err != nil || st.Size() != 40*256<<10 {
		t.Fatalf("file after following: %v %v", st, err)
	}
	FollowWriteback(filepath.Join(dir, "missing"))()
}
