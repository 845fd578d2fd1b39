package podsnap

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podsnapshot/podsnapshot/checkpoint/stream"
	"github.com/podsnapshot/podsnapshot/internal/config"
)

// TestRestoreImageDirect: restore_direct gives --direct to a restore from plain files (a
// node cache entry found at Create or by a streaming Open, a whole download), never to
// one through a streaming image's FUSE mount, and to none when it is off.
func TestRestoreImageDirect(t *testing.T) {
	on, off := config.Default(), config.Default()
	off.RestoreDirect = false
	cases := []struct {
		name string
		f    *fetch
		cfg  config.Config
		want bool
	}{
		{"node cache entry at Create", &fetch{cached: true, dir: "/cache/e"}, on, true},
		{"whole download", &fetch{dir: "/cache/e"}, on, true},
		{"streaming Open found the entry", &fetch{dir: "/cache/e", img: &stream.Image{Dir: "/cache/e", Cached: true}}, on, true},
		{"streaming through the FUSE mount", &fetch{dir: "/work/p/image", img: &stream.Image{Dir: "/work/p/image"}}, on, false},
		{"node cache entry, restore_direct off", &fetch{cached: true, dir: "/cache/e"}, off, false},
	}
	for _, c := range cases {
		got := c.f.restoreImage(c.cfg)
		if got.Dir != c.f.dir || got.Direct != c.want {
			t.Errorf("%s: %+v, want dir %s direct %v", c.name, *got, c.f.dir, c.want)
		}
	}
}

// TestRestoreDirectOff: with restore_direct = false a restore from the node cache is the
// plain `runsc restore --background`, as before the key.
func TestRestoreDirectOff(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	e.cfg.RestoreDirect = false
	checkpointWorkload(t, e, "sb1")
	p, sb := e.plan("sb2", "pod-sb2")
	if !p.Restores() {
		t.Fatal("second pod does not restore")
	}
	must(t, p.Start(context.Background(), sb))
	if got := sb.callLog(); got != "restore" {
		t.Fatalf("calls = %q, want a restore without --direct", got)
	}
	p.Delete(context.Background(), sb)
}

// TestDirectReadable: only a file system that refuses O_DIRECT (EINVAL) turns --direct
// off; a missing file is left to runsc, which reports it.
func TestDirectReadable(t *testing.T) {
	if !directReadable(filepath.Join(t.TempDir(), "absent")) {
		t.Fatal("a missing image dir turned --direct off")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pages.img"), make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(filepath.Join(dir, "pages.img"), unix.O_RDONLY|unix.O_DIRECT, 0)
	if err == nil {
		unix.Close(fd)
	}
	if want := !errors.Is(err, unix.EINVAL); directReadable(dir) != want {
		t.Fatalf("directReadable = %v, want %v (open O_DIRECT: %v)", !want, want, err)
	}
}
