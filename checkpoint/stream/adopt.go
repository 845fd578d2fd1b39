package stream

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/storage"
)

// adoptResident is the share of a linked pages.img's pages that must be in the page
// cache for the fill to be verified whole before the restore (adopt) instead of
// streamed. The bytes of a linked fill are on the node already: streaming them only
// spreads their verification over the restore, and costs gVisor's loader the FUSE
// mount, which is slower than reading a plain file (make bench, the torch server's
// 1.2 GB: 5.0 s from the local store through the mount against 3.1 s for raw
// `runsc restore --direct`). Verifying pages in memory runs at memory speed (2 GiB in a
// few hundred ms on 2 cores); pages that must come from the disk first would hold the
// restore back by the whole read, where streaming overlaps it with the loading.
const adoptResident = 0.9

// adoptLinked verifies, when most of its pages are in the page cache, every frame of the
// linked pages.img of fl (prepared, without its progress file) and publishes fl as the
// node cache entry: the restore then reads a plain cache entry (Image.Cached), with
// `runsc restore --direct` where the shim is configured so. It returns nil, nil when
// the file is not resident enough (stream it). Errors: a *storage.CorruptError naming a
// bad frame (the store's object is bad: nothing restores from it), the file's read
// errors, errNotKept wrapping the marker's removal's or Publish's; fl is then gone. mincore needs the shim to own or be able to write
// the file (Linux 5.0 and later), as root does; else every page counts as resident.
func adoptLinked(ctx context.Context, src Source, fl *cache.Filling, x *storage.FrameIndex) (*Image, error) {
	data, err := os.Open(filepath.Join(fl.Dir, PagesFile))
	if err != nil {
		fl.Abort()
		return nil, err
	}
	defer data.Close()
	share, err := resident(data, x.Info().RawSize)
	if err != nil || share < adoptResident {
		// Not known to be in memory: streaming overlaps reading it with the restore.
		return nil, nil
	}
	if err := verifyAll(ctx, src.Store, x, data); err != nil {
		fl.Abort()
		return nil, err
	}
	if err := os.Remove(filepath.Join(fl.Dir, linkedFile)); err != nil {
		fl.Abort()
		return nil, fmt.Errorf("%w: %w", errNotKept, err)
	}
	entry, err := publishFill(fl)
	if err != nil {
		return nil, fmt.Errorf("%w: keep the verified snapshot %s in the node cache: %w", errNotKept, src.Store.URL(x.Info().Name), err)
	}
	return &Image{Dir: entry, Cached: true, Adopted: true}, nil
}

// publishFill is cache.Filling.Publish; tests make it fail.
var publishFill = (*cache.Filling).Publish

// errNotKept is wrapped by adoptLinked's error when the verified fill could not become
// the node cache entry (its fsync or rename failed): the snapshot is sound, so Open
// streams it instead, without the cache.
var errNotKept = errors.New("not kept in the node cache")

// resident returns the share (0 to 1) of the first size bytes of f whose pages are in
// the page cache (mincore(2) of a shared read-only mapping; nothing is read).
func resident(f *os.File, size int64) (float64, error) {
	if size <= 0 {
		return 1, nil
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("map %s: %w", f.Name(), err)
	}
	defer unix.Munmap(m)
	page := int64(os.Getpagesize())
	vec := make([]byte, (size+page-1)/page)
	// x/sys/unix has no wrapper of mincore.
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return 0, fmt.Errorf("mincore %s: %w", f.Name(), errno)
	}
	in := 0
	for _, b := range vec {
		in += int(b & 1)
	}
	return float64(in) / float64(len(vec)), nil
}

// verifyAll checks every frame of the linked data file against x (verifier's read and
// FrameIndex.Check), on one goroutine per CPU; the first error stops them.
func verifyAll(ctx context.Context, st storage.Store, x *storage.FrameIndex, data *os.File) error {
	check := verifier(st, x, data)
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for range min(runtime.GOMAXPROCS(0), x.Len()) {
		g.Go(func() error {
			for {
				i := int(next.Add(1) - 1)
				if i >= x.Len() || gctx.Err() != nil {
					return gctx.Err()
				}
				if err := check(gctx, i, 1, func(int) {}, func() {}); err != nil {
					return err
				}
			}
		})
	}
	return g.Wait()
}
