// Package stream restores a snapshot while its pages arrive: the image directory runsc
// restores from is a FUSE mount served by the shim, where checkpoint.img and
// pages_meta.img are complete local files and pages.img is a File whose frames
// (storage.FrameIndex) are fetched in order in the background and, when the sandbox
// reads one that has not arrived, at once. The arriving bytes fill the node cache entry
// of the snapshot, so the next restore on the node is a cached one, and the shims
// restoring one snapshot at the same time share one download (Open).
package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/storage"
)

// PagesFile is the image file that streams; the others are fetched whole first.
const PagesFile = "pages.img"

// Files in a fill's directory besides the image files.
const (
	// progressFile holds one progress byte per frame of pages.img; it appears (by
	// rename) once the other files are complete, and is removed before the fill is
	// published.
	progressFile = ".progress"
	// linkedFile marks a fill whose pages.img is a hard link to the store's object: its
	// bytes are there and only verified, never written (it is the store's file).
	linkedFile = ".linked"
)

// ErrNotStreamable is wrapped by Open's error for a snapshot that cannot stream (its
// pages are not framed, or it has none): restore it the way it was before.
var ErrNotStreamable = errors.New("snapshot cannot stream")

// Source is the snapshot Open streams.
type Source struct {
	// Store holds the files.
	Store storage.Store
	// Files are the manifest's files, each with the image file it is (LocalName).
	Files []storage.FileInfo
	// LocalName maps an object name to its image file name (repo's mapping).
	LocalName func(object string) (string, bool)
	// Key is the snapshot's node cache key (repo.CacheKey).
	Key string
	// Cache is the node cache; a disabled one streams into a private directory.
	Cache *cache.Cache
	// OnCorrupt is called once, from any goroutine, when a frame failed verification
	// twice or is not in the object: the stored snapshot is bad. Every read of pages.img
	// fails from then on (runsc's sandbox then stops).
	OnCorrupt func(err error)
	// Stall is how long a fetch may go without a byte arriving before it is abandoned
	// (ErrStalled); 0 means stallAfter.
	Stall time.Duration
	// HotFrames is the object name of the snapshot's hot-frame list (hot.go,
	// hotlist.go): read at Open, its frames are fetched first; absent, this restore
	// records one and writes it there. "": none is read or recorded.
	HotFrames string
	// HotFramesCheck, when set, is asked right before a recorded list is written: an
	// error (the snapshot was deleted or marked failed meanwhile) writes none, so that
	// no list outlives its snapshot.
	HotFramesCheck func(ctx context.Context) error

	// streamLinked: stream a linked pages.img even when its pages are in memory (tests
	// of the streaming of linked fills; adoptLinked).
	streamLinked bool
}

// Image is a snapshot image being restored from.
type Image struct {
	// Dir is the image directory to restore from: a FUSE mount, or the node cache entry
	// when the snapshot was already cached.
	Dir string
	// Cached: Dir is the complete cache entry; nothing streams.
	Cached bool
	// Adopted: Cached, and the entry is this Open's: the local store's own pages file,
	// in memory, verified whole and published (adoptLinked).
	Adopted bool

	pages  *File
	data   *os.File // pages.img's data file (in files)
	mnt    *mount
	cancel context.CancelFunc
	done   chan struct{} // closed when the fill goroutine ended
	files  []*os.File
	hot    *hotLoad // the stored hot-frame list, being read; nil: none is used

	mu sync.Mutex
	// The fields below are guarded by mu.
	fill      *cache.Filling // this shim fills (nil: another shim does, or it is over)
	fillDir   string
	published string        // the cache entry once published
	synced    time.Duration // how long publishing it spent in fsync
}

// Open starts restoring src into the directory mountDir (created, empty): the small
// files are fetched and verified (or shared with another shim's fill), then pages.img
// is mounted and streams in the background. It returns once runsc can restore from
// Image.Dir. Errors: ErrNotStreamable (wrapped); cache.ErrTooLarge or ErrNoRoom; the
// store's; a *storage.CorruptError of a small file; a FUSE mount failure (wrapping
// ErrNoFUSE). On error nothing is left mounted or filled.
func Open(ctx context.Context, src Source, mountDir string) (*Image, error) {
	pages, raw, err := src.pagesInfo()
	if err != nil {
		return nil, err
	}
	x, err := storage.NewFrameIndex(pages)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotStreamable, err)
	}
	// A shared fill may be published (renamed) while this shim opens it: claim again.
	for attempt := 1; ; attempt++ {
		claim, err := src.Cache.Claim(src.Key, raw)
		if err != nil {
			return nil, err
		}
		if claim.Entry != "" {
			return &Image{Dir: claim.Entry, Cached: true}, nil
		}
		img, err := openClaim(ctx, src, claim, x, raw, mountDir)
		if errors.Is(err, errNotKept) && !src.streamLinked {
			log.G(ctx).WithError(err).Warn("podsnapshot: streaming the snapshot instead")
			src.streamLinked = true
			continue
		}
		if err != nil && claim.Fill == nil && attempt < 3 {
			if _, serr := os.Stat(claim.Filling); serr != nil || errors.Is(err, errFillerEnded) {
				continue
			}
		}
		return img, err
	}
}

// openClaim is Open of one claim: this shim's fill, or another's.
func openClaim(ctx context.Context, src Source, claim cache.Claim, x *storage.FrameIndex, raw int64, mountDir string) (*Image, error) {
	img := &Image{done: make(chan struct{})}
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	img.cancel = cancel
	if src.HotFrames != "" {
		// Read alongside the small files: the fill waits for it before it starts.
		img.hot = loadHot(fctx, src, x)
	}
	var dir string
	var err error
	if claim.Fill != nil {
		img.fill, dir = claim.Fill, claim.Fill.Dir
		var linked bool
		linked, err = src.prepare(ctx, dir, x)
		if err == nil && linked && !claim.Fill.Private && !src.streamLinked {
			// Before the progress file exists, so no other shim shares the fill yet: one
			// that found it waits (awaitPrepared), then finds the entry.
			adopted, aerr := adoptLinked(ctx, src, claim.Fill, x)
			if adopted != nil || aerr != nil {
				cancel()
				return adopted, aerr // the fill was published or removed
			}
		}
		if err == nil {
			err = writeProgress(dir, x)
		}
	} else {
		dir = claim.Filling
		err = awaitPrepared(ctx, src.Cache, dir)
	}
	if err == nil {
		err = img.open(fctx, src, dir, x)
	}
	if err == nil {
		err = img.serve(fctx, src, dir, mountDir)
	}
	if err != nil {
		cancel()
		img.closeFiles()
		if img.fill != nil {
			img.fill.Abort()
		}
		return nil, err
	}
	img.fillDir = dir
	go img.run(fctx, src, x, raw)
	return img, nil
}

// pagesInfo returns pages.img's FileInfo and the raw size of all files.
func (src Source) pagesInfo() (pages storage.FileInfo, raw int64, err error) {
	found := false
	for _, f := range src.Files {
		raw += f.RawSize
		if name, _ := src.LocalName(f.Name); name == PagesFile {
			pages, found = f, true
		}
	}
	if !found || !pages.Framed() {
		return pages, 0, fmt.Errorf("%w: its pages file is not stored in frames", ErrNotStreamable)
	}
	return pages, raw, nil
}

// prepare checks pages.img's stored size (checkSize), fills dir with the complete small
// files and pages.img: a hard link to the store's uncompressed object, verified later
// frame by frame (linked), or a sparse file of its raw size. The progress file comes
// last (writeProgress).
func (src Source) prepare(ctx context.Context, dir string, x *storage.FrameIndex) (linked bool, err error) {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return checkSize(gctx, src.Store, x.Info()) })
	for _, f := range src.Files {
		name, ok := src.LocalName(f.Name)
		if !ok {
			return false, fmt.Errorf("unexpected file %s", f.Name)
		}
		if name == PagesFile {
			continue
		}
		g.Go(func() error { return storage.DownloadFile(gctx, src.Store, f, filepath.Join(dir, name)) })
	}
	if err := g.Wait(); err != nil {
		return false, err
	}
	pages := x.Info()
	path := filepath.Join(dir, PagesFile)
	if l, ok := src.Store.(storage.Linker); ok && pages.Codec == storage.CodecNone {
		linked = l.Link(ctx, pages.Name, path) == nil
	}
	if linked {
		return true, os.WriteFile(filepath.Join(dir, linkedFile), nil, 0o600)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return false, err
	}
	err = f.Truncate(pages.RawSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return false, err
}

// writeProgress puts the fill's progress file (every frame absent) into dir: from then
// on other shims may share the fill.
func writeProgress(dir string, x *storage.FrameIndex) error {
	tmp := filepath.Join(dir, progressFile+".tmp")
	if err := os.WriteFile(tmp, make([]byte, x.Len()), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, progressFile))
}

// checkSize compares the object's size in the store with the one the manifest records
// (one metadata call): an object cut short, or replaced by one of another size, is
// corrupt now, before the pod restores, instead of a frame that never arrives once it
// runs. The small files need no check: they are downloaded whole and verified first.
func checkSize(ctx context.Context, st storage.Store, info storage.FileInfo) error {
	obj, err := st.Stat(ctx, info.Name)
	if err != nil {
		return err
	}
	if obj.Size != info.StoredSize {
		return storage.Corruptf(st.URL(info.Name), "size mismatch: the store holds %d bytes, the manifest says %d", obj.Size, info.StoredSize)
	}
	return nil
}

// preparedWait bounds how long a shim waits for another's fill to have its small files.
const preparedWait = 2 * time.Minute

// errFillerEnded is wrapped by awaitPrepared's error when the fill's filler ended
// before its small files were complete: its process died, or it removed or published
// the fill. Open claims again instead of starting the pod cold.
var errFillerEnded = errors.New("its filler ended before its files were complete")

// awaitPrepared waits until the fill in dir has its progress file (its small files are
// complete), while its filler lives (probed every takeOverEvery: it takes the cache
// lock).
func awaitPrepared(ctx context.Context, c *cache.Cache, dir string) error {
	deadline := time.Now().Add(preparedWait)
	probe := time.Now().Add(takeOverEvery)
	for {
		alive := true
		if time.Now().After(probe) {
			alive, probe = c.FillerAlive(dir), time.Now().Add(takeOverEvery)
		}
		// After the probe: a filler that wrote the progress file, then ended, did its part.
		if _, err := os.Stat(filepath.Join(dir, progressFile)); err == nil {
			return nil
		}
		if !alive {
			return fmt.Errorf("the fill %s sharing this snapshot: %w", dir, errFillerEnded)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the fill %s sharing this snapshot did not complete its small files in %s", dir, preparedWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// open opens the fill's files and makes the pages File.
func (img *Image) open(ctx context.Context, src Source, dir string, x *storage.FrameIndex) error {
	_, linkedErr := os.Stat(filepath.Join(dir, linkedFile))
	linked := linkedErr == nil
	mode := os.O_RDWR
	if linked {
		mode = os.O_RDONLY // the store's own file: never written
	}
	data, err := os.OpenFile(filepath.Join(dir, PagesFile), mode, 0)
	if err != nil {
		return err
	}
	img.files, img.data = append(img.files, data), data
	prog, err := os.OpenFile(filepath.Join(dir, progressFile), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	img.files = append(img.files, prog)
	url := src.Store.URL(x.Info().Name)
	f, err := newFile(ctx, x, url, data, prog)
	if err != nil {
		return err
	}
	if src.Stall > 0 {
		f.stall = src.Stall
	}
	f.linked = linked
	if src.HotFrames != "" {
		f.rec = newRecorder(x)
	}
	f.onFail = func(err error) {
		if errors.Is(err, storage.ErrCorrupt) && src.OnCorrupt != nil {
			src.OnCorrupt(err)
		}
	}
	if img.fill != nil {
		f.fetch = fillFetcher(src.Store, x, data, linked, img.fill)
	}
	img.pages = f
	return nil
}

// serve mounts the image files at mountDir.
func (img *Image) serve(ctx context.Context, src Source, dir, mountDir string) error {
	files := map[string]servedFile{PagesFile: img.pages}
	for _, f := range src.Files {
		name, _ := src.LocalName(f.Name)
		if name == PagesFile {
			continue
		}
		lf, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		img.files = append(img.files, lf)
		files[name] = localFile{f: lf, size: f.RawSize}
	}
	// A shim that died while serving leaves its mount behind, dead (ENOTCONN): detach it.
	_ = unix.Unmount(mountDir, unix.MNT_DETACH)
	if err := os.MkdirAll(mountDir, 0o700); err != nil {
		return err
	}
	m, err := mountFiles(ctx, mountDir, files, func(name string, err error) {
		log.L.WithError(err).Errorf("podsnapshot: the restored sandbox could not read %s of its snapshot", name)
	})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoFUSE, err)
	}
	img.mnt, img.Dir = m, mountDir
	return nil
}

// ErrNoFUSE is wrapped by Open's error when the FUSE mount failed.
var ErrNoFUSE = errors.New("FUSE unavailable")

func (img *Image) closeFiles() {
	for _, f := range img.files {
		f.Close()
	}
	img.files = nil
}

// framePool holds the buffers of the fetches in flight, so that streaming a large file
// reuses a few frames' worth of memory instead of allocating two buffers per fetch.
var framePool = sync.Pool{New: func() any { return &storage.FrameBuffers{} }}

// fillFetcher returns how frames come into data, the pages file of fill fl: verifier's
// way for a linked file, downloader's otherwise, with writeback unless fl is private.
func fillFetcher(st storage.Store, x *storage.FrameIndex, data *os.File, linked bool, fl *cache.Filling) fetchFunc {
	if linked {
		return verifier(st, x, data)
	}
	return downloader(st, x, data, !fl.Private)
}

// verifier returns how the frames of a linked fill come into data: they are there
// already (data is the store's own object), so each is read from data and verified.
func verifier(st storage.Store, x *storage.FrameIndex, data *os.File) fetchFunc {
	url := st.URL(x.Info().Name)
	return func(ctx context.Context, first, n int, done func(int), _ func()) error {
		bufs := framePool.Get().(*storage.FrameBuffers)
		defer framePool.Put(bufs)
		if int64(cap(bufs.Stored)) < x.Info().FrameSize {
			bufs.Stored = make([]byte, x.Info().FrameSize)
		}
		for i := first; i < first+n; i++ {
			b := bufs.Stored[:x.RawLen(i)]
			if _, err := data.ReadAt(b, x.RawOffset(i)); err != nil {
				if errors.Is(err, io.EOF) {
					// The store's object was cut short: corrupt, not worth retrying.
					return storage.Corruptf(url, "frame %d: object ends early", i)
				}
				return fmt.Errorf("%s: read frame %d: %w", url, i, err)
			}
			if err := x.Check(url, i, b); err != nil {
				return err
			}
			done(i)
		}
		return nil
	}
}

// downloader returns how frames come into the fill's data file: read from the store,
// verified, decoded and written; with writeback (see writeback) when the fill is to be
// published. A private fill (caching disabled) is never fsynced and is removed with its
// pod: its pages need not reach the disk while the sandbox loads them (the kernel's own
// writeback takes those that live 30 s).
func downloader(st storage.Store, x *storage.FrameIndex, data *os.File, writeback bool) fetchFunc {
	url := st.URL(x.Info().Name)
	wb := newWriteback(data, writeback)
	return func(ctx context.Context, first, n int, done func(int), alive func()) error {
		bufs := framePool.Get().(*storage.FrameBuffers)
		defer framePool.Put(bufs)
		return storage.ReadFrames(ctx, aliveStore{st, alive}, x, first, n, bufs, func(i int, raw []byte) error {
			if _, err := data.WriteAt(raw, x.RawOffset(i)); err != nil {
				return fmt.Errorf("write frame %d of %s: %w", i, url, err)
			}
			done(i) // readers first: starting writeback can wait for the disk's queue
			wb.start(x.RawOffset(i), int64(len(raw)))
			return nil
		})
	}
}

// writeback hands each frame written into the fill to the kernel's writeback at once
// (sync_file_range SYNC_FILE_RANGE_WRITE, which starts the write and does not wait for
// it), so that the disk writes while the rest downloads and the fsync that publishes
// the entry (cache.Filling.Publish) finds little left: on this project's bench VM that
// fsync was 360 ms of a 750 ms fill of 512 MiB, and 1.1 s at 2 GiB, all after the last
// byte arrived. A write error is not lost: nothing here waits on the range, so the
// publishing fsync still reports it.
type writeback struct {
	fd  int
	off atomic.Bool // off, or the filesystem refused sync_file_range: leave it all to the fsync
}

// newWriteback returns the writeback of data, doing nothing unless on.
func newWriteback(data *os.File, on bool) *writeback {
	w := &writeback{fd: int(data.Fd())}
	w.off.Store(!on)
	return w
}

func (w *writeback) start(off, n int64) {
	if w.off.Load() {
		return
	}
	if err := unix.SyncFileRange(w.fd, off, n, unix.SYNC_FILE_RANGE_WRITE); storage.WritebackUnsupported(err) {
		w.off.Store(true)
	}
}

// aliveStore calls alive whenever a ranged read returns bytes: the stall deadline
// (File.attempt) counts bytes, not frames.
type aliveStore struct {
	storage.Store
	alive func()
}

func (s aliveStore) GetRange(ctx context.Context, name string, off, n int64) (io.ReadCloser, error) {
	rc, err := s.Store.GetRange(ctx, name, off, n)
	if err != nil {
		return nil, err
	}
	return aliveReader{rc, s.alive}, nil
}

type aliveReader struct {
	io.ReadCloser
	alive func()
}

func (r aliveReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if n > 0 {
		r.alive()
	}
	return n, err
}
