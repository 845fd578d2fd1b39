package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
)

// The cached restore's floor (issue 26): how fast raw runsc restores from the files a
// node cache entry holds, read in the ways the shim could ask for. A first restore reads
// pages.img through the shim's FUSE mount (FOPEN_DIRECT_IO), a cached one the entry's
// regular file; these rows say what runsc alone does with each.

// pagesRead is how a raw restore reads the image: from the page cache or from the disk
// (the files' cached pages dropped first), and with or without `runsc restore --direct`
// (gVisor opens pages.img with O_DIRECT; checkpoint.img and pages_meta.img are read as
// usual either way).
type pagesRead struct {
	// direct passes --direct.
	direct bool
	// cold drops the image files' pages from the page cache before the restore
	// (fsync, then posix_fadvise DONTNEED: only this image's pages, not the machine's
	// cache, which other processes use); false reads the files once first, as raw.restore
	// does, so that they are cached.
	cold bool
	// foreground leaves out --background (the floor's reference row without it).
	foreground bool
}

func (p pagesRead) String() string {
	s := "page cache"
	if p.cold {
		s = "page cache dropped"
	}
	if p.direct {
		s += ", --direct"
	}
	return s
}

// defineCachedPathMetrics defines the rows measureCachedPath adds (times in seconds).
func defineCachedPathMetrics(r *Results) {
	r.define("raw_restore_direct", "raw `runsc create` + `runsc restore --background --direct` (pages.img with O_DIRECT)", "s",
		"as the floor (image read once beforehand, in the page cache), with --direct: gVisor opens pages.img O_DIRECT, so each of its 256 KiB reads goes to the disk, not the page cache; invoked -> `checkpoint result: restore` seen")
	r.define("raw_restore_direct_memok", "raw runsc restore --background --direct to `memory ok`", "s", "")
	r.define("raw_restore_cold", "raw `runsc create` + `runsc restore --background`, image not in the page cache", "s",
		"the image files' cached pages dropped first (fsync, posix_fadvise DONTNEED on each file): a node cache entry evicted from memory")
	r.define("raw_restore_cold_memok", "raw runsc restore --background, image not in the page cache, to `memory ok`", "s", "")
}

// measureCachedPath adds, for the image img of mib MiB, runs of raw runsc restore with
// --direct (raw_restore_direct, raw_restore_direct_memok) and from a dropped page cache
// (raw_restore_cold, raw_restore_cold_memok), runs times each, alternating, so that the
// lead's measureDirect can put them next to raw.restore's floor. Errors are runsc's or
// the image's, wrapped.
func measureCachedPath(ctx context.Context, res *Results, raw *rawRunsc, mib int, img *rawImage, runs int) error {
	for r := 0; r < runs; r++ {
		for _, p := range []pagesRead{{direct: true}, {cold: true}} {
			ready, memOK, err := raw.restoreRead(ctx, mib, img, img.dir, p)
			if err != nil {
				return fmt.Errorf("raw restore (%s), %d MiB: %w", p, mib, err)
			}
			key := "raw_restore_direct"
			if p.cold {
				key = "raw_restore_cold"
			}
			res.add(key, mib, ready.Seconds())
			res.add(key+"_memok", mib, memOK.Seconds())
			logf("  runsc create+restore --background (%s) %.3fs (memory ok %.3fs)", p, ready.Seconds(), memOK.Seconds())
		}
	}
	return nil
}

// restoreRead times `runsc create` + `runsc restore --detach --background` of img's
// workload from the image files in dir (img.dir, or a directory serving the same files,
// such as a FUSE mount of them), read as p says, until the restored workload prints its
// restore line (toReady) and its `memory ok` line (toMemOK); the container is deleted.
func (r *rawRunsc) restoreRead(ctx context.Context, mib int, img *rawImage, dir string, p pagesRead) (toReady, toMemOK time.Duration, err error) {
	rs, err := r.startRestore(ctx, fmt.Sprintf("restore-%d", mib), img, dir, p)
	if err != nil {
		return 0, 0, err
	}
	defer rs.end()
	tail, t0 := rs.tail, rs.started
	// The restored process writes at the offset its descriptor had when saved: the fresh
	// output file starts with a hole (NUL bytes) of that length.
	back, err := tail.Wait(ctx, 5*time.Minute, `"checkpoint result" line`, func(s string) bool { return strings.HasPrefix(trimNUL(s), "checkpoint result: ") })
	if err != nil {
		return 0, 0, fmt.Errorf("runsc restore: %w", err)
	}
	if !strings.HasSuffix(back.Text, ": restore") {
		return 0, 0, fmt.Errorf("runsc restore: the workload read %q, want restore", trimNUL(back.Text))
	}
	mem, err := tail.Wait(ctx, 5*time.Minute, "memory check", func(s string) bool { return strings.HasPrefix(trimNUL(s), "memory ") })
	if err != nil {
		return 0, 0, fmt.Errorf("runsc restore: %w", err)
	}
	if trimNUL(mem.Text) != "memory ok" {
		return 0, 0, fmt.Errorf("runsc restore: %s", trimNUL(mem.Text))
	}
	return back.Seen.Sub(t0), mem.Seen.Sub(t0), nil
}

// dropCached removes dir's regular files from the page cache: each is fsynced (only
// clean pages can be dropped) and then advised POSIX_FADV_DONTNEED.
func dropCached(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		err = f.Sync()
		if err == nil {
			err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("drop %s from the page cache: %w", e.Name(), err)
		}
	}
	return nil
}

// rawRestore is a container `runsc restore` is restoring, and its output.
type rawRestore struct {
	r       *rawRunsc
	bundle  string
	id      string
	out     *os.File
	tail    *lab.Tail
	started time.Time // just before `runsc create`
}

// startRestore restores img's workload as a container named after name, from the image
// files in dir read as p says (img.dir's page cache emptied first for p.cold, filled
// otherwise), and returns once `runsc restore --detach` has returned; end deletes it.
func (r *rawRunsc) startRestore(ctx context.Context, name string, img *rawImage, dir string, p pagesRead) (rs *rawRestore, err error) {
	b, err := r.bundle(name, nil, img.command...)
	if err != nil {
		return nil, err
	}
	id := r.nextID("raw-" + name)
	out, tail, err := r.output(id)
	if err != nil {
		return nil, err
	}
	rs = &rawRestore{r: r, bundle: b, id: id, out: out, tail: tail}
	defer func() {
		if err != nil {
			rs.end()
		}
	}()
	if p.cold {
		err = dropCached(img.dir)
	} else {
		_, err = dirBytesRead(img.dir)
	}
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", img.dir, err)
	}
	rs.started = time.Now()
	if err := r.run(ctx, b, out, "create", "--bundle", b, id); err != nil {
		return nil, err
	}
	args := []string{"restore", "--image-path=" + dir, "--detach"}
	if !p.foreground {
		args = append(args, "--background")
	}
	if p.direct {
		args = append(args, "--direct")
	}
	if err := r.run(ctx, b, out, append(args, id)...); err != nil {
		return nil, err
	}
	return rs, nil
}

// end deletes the container and closes its output.
func (rs *rawRestore) end() {
	rs.r.delete(rs.id, rs.bundle)
	rs.out.Close()
	rs.tail.Close()
}
