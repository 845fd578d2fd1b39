package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/podsnapshot/podsnapshot/storage"
)

// Progress byte values, one per frame, in a fill's progress file (ProgressFile). The
// shims restoring one snapshot on a node share the file: the filler writes present,
// the others write wanted for a frame their sandbox waits for.
const (
	absent  = 0
	present = 1
	wanted  = 2
	// The filler gave up the file: it writes one of these into every frame not present,
	// so that the shims sharing the fill fail too, the same way (poll, sharedFailure).
	failedCorrupt = 3 // a frame bad or missing in the store
	failedStalled = 4 // the store stopped answering
	failedOther   = 5 // the store kept failing
)

// fetchFunc brings frames [first, first+n) into the data file and calls done(i) for each
// frame once its verified bytes are there, and alive whenever bytes came from the store.
type fetchFunc func(ctx context.Context, first, n int, done func(i int), alive func()) error

// File is a framed file (storage.FrameIndex) whose raw bytes arrive in a local file,
// frame by frame, and are read by ranges while they arrive: a read of frames not there
// yet waits for them and, at the filler, fetches them ahead of the sequential download.
// A frame counts as there only once verified (its CRC32C, and its zstd checksum), so a
// reader never sees unverified bytes.
type File struct {
	ctx  context.Context // ends when the image is closed: stops fetches readers started
	x    *storage.FrameIndex
	url  string
	data *os.File // the raw bytes, at their raw offsets
	prog *os.File // one progress byte per frame
	// linked: data is the store's own object (a hard link), whose bytes can be cut short
	// under the file after they were verified; reads check its size.
	linked bool
	// onFail is told, once and outside mu, why the file failed; nil: nobody.
	onFail func(error)
	// stall is how long a fetch may go without a byte arriving (stallAfter).
	stall time.Duration
	// rec records the frames the sandbox reads out of its loader's order (hot.go); nil:
	// none. Set before the file is served, never changed.
	rec *recorder

	mu sync.Mutex
	// The fields below are guarded by mu.
	have    []bool    // frame verified in data
	busy    []bool    // frame being fetched by this process
	missing int       // frames not yet in have
	fetch   fetchFunc // nil while another process fills: frames are awaited
	failed  error     // a frame could not be had: every read fails with it
	// failedCh is closed when failed is set.
	failedCh chan struct{}
	// arrived holds, for each frame a reader waits for, a channel closed when it is
	// there: a frame wakes only its own readers (up to 128 of gVisor's loader threads
	// wait at once; waking them all for every frame costs CPU the restore needs).
	arrived map[int]chan struct{}
	ended   chan struct{} // closed once every frame is there or the file failed
	waiting int           // readers waiting for a frame
	fetched int           // frames this process brought in
	stored  int64         // their stored bytes
}

// newFile returns the File of x's frames in data, with progress in prog (whose bytes
// are read now: frames already present are not fetched again).
func newFile(ctx context.Context, x *storage.FrameIndex, url string, data, prog *os.File) (*File, error) {
	f := &File{ctx: ctx, x: x, url: url, data: data, prog: prog,
		have: make([]bool, x.Len()), busy: make([]bool, x.Len()),
		arrived: make(map[int]chan struct{}), ended: make(chan struct{}),
		failedCh: make(chan struct{}), stall: stallAfter}
	f.missing = x.Len()
	if f.missing == 0 {
		close(f.ended)
	}
	if err := f.poll(); err != nil {
		return nil, err
	}
	return f, nil
}

// Size is the raw size in bytes.
func (f *File) Size() int64 { return f.x.Info().RawSize }

// Complete reports whether every frame is there.
func (f *File) Complete() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.missing == 0
}

// Err is the error that made the file unreadable, or nil.
func (f *File) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

// Ready waits until the frames under the n bytes at off are there, or until ctx ends or
// the file fails (its error, which names the object and frame). It returns how many of
// the n bytes the file has (fewer at its end, 0 at or past it); they can then be read
// from Fd at off.
func (f *File) Ready(ctx context.Context, off int64, n int) (int, error) {
	size := f.Size()
	if off >= size || n <= 0 {
		return 0, nil
	}
	n = int(min(int64(n), size-off))
	if f.rec != nil {
		f.rec.read(off, int64(n))
	}
	first, last := f.x.Frames(off, int64(n))
	if err := f.await(ctx, first, last); err != nil {
		return 0, err
	}
	if f.linked {
		if err := f.checkLinked(off + int64(n)); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// checkLinked fails the file when the linked object no longer holds the bytes up to end
// (it was cut short in the store after its frames were verified): a read would splice
// fewer bytes than the sandbox asked for, without a word about why.
func (f *File) checkLinked(end int64) error {
	fi, err := f.data.Stat()
	if err != nil {
		return fmt.Errorf("%s: %w", f.url, err)
	}
	if fi.Size() >= end {
		return nil
	}
	first, _ := f.x.Frames(fi.Size(), 1)
	err = storage.Corruptf(f.url, "frame %d: object ends early: cut to %d bytes after it was verified", first, fi.Size())
	f.fail(err)
	return f.Err()
}

// Fd is the data file's descriptor, for reading (or splicing) bytes Ready reported.
func (f *File) Fd() uintptr { return f.data.Fd() }

// await waits until frames [first, last] are there.
func (f *File) await(ctx context.Context, first, last int) error {
	f.mu.Lock()
	counted := false
	defer func() {
		if counted {
			f.waiting--
		}
		f.mu.Unlock()
	}()
	for {
		if f.failed != nil {
			return f.failed
		}
		next := -1 // the first frame not there
		for i := first; i <= last; i++ {
			if !f.have[i] {
				if next < 0 {
					next = i
				}
				f.want(i)
			}
		}
		if next < 0 {
			return nil
		}
		if !counted {
			counted = true
			f.waiting++
		}
		ch := f.arrived[next]
		if ch == nil {
			ch = make(chan struct{})
			f.arrived[next] = ch
		}
		ended := f.ended
		f.mu.Unlock()
		select {
		case <-ch:
		case <-ended:
		case <-ctx.Done():
			f.mu.Lock()
			return ctx.Err()
		}
		f.mu.Lock()
	}
}

// want asks for frame i ahead of the others: the filler fetches it now; another process
// marks it wanted in the progress file for the filler to see. Called with mu held.
func (f *File) want(i int) {
	if f.busy[i] {
		return
	}
	if f.fetch == nil {
		var b [1]byte
		if n, _ := f.prog.ReadAt(b[:], int64(i)); n == 1 && b[0] == absent {
			b[0] = wanted
			_, _ = f.prog.WriteAt(b[:], int64(i))
		}
		return
	}
	f.busy[i] = true
	go f.fetchOne(f.ctx, i)
}

// setHave records frame i as there and wakes its readers. Called with mu held.
func (f *File) setHave(i int) {
	if f.have[i] {
		return
	}
	f.have[i] = true
	f.missing--
	if ch := f.arrived[i]; ch != nil {
		close(ch)
		delete(f.arrived, i)
	}
	if f.missing == 0 && f.failed == nil {
		close(f.ended)
	}
}

// markPresent records frame i as verified in data, here and in the progress file.
func (f *File) markPresent(i int) {
	// have first, then the progress byte: poll, reading the byte, must not count the
	// frame as another shim's.
	f.mu.Lock()
	if !f.have[i] {
		f.setHave(i)
		f.fetched++
		f.stored += f.x.Info().Frames[i].Size
	}
	f.mu.Unlock()
	_, _ = f.prog.WriteAt([]byte{present}, int64(i))
}

// Fetched returns how many frames this process brought in and their stored bytes (the
// rest came through the progress file from another shim).
func (f *File) Fetched() (frames int, stored int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fetched, f.stored
}

// fail makes every read fail with err from now on, and tells onFail (the first error
// only).
func (f *File) fail(err error) {
	f.mu.Lock()
	first := f.failed == nil
	if first {
		f.failed = err
		close(f.failedCh)
		if f.missing > 0 {
			close(f.ended)
		}
	}
	onFail := f.onFail
	filler := f.fetch != nil
	var absentFrames []int
	if first && filler {
		for i, have := range f.have {
			if !have {
				absentFrames = append(absentFrames, i)
			}
		}
	}
	f.mu.Unlock()
	for _, i := range absentFrames {
		_, _ = f.prog.WriteAt([]byte{failureByte(err)}, int64(i))
	}
	if first && onFail != nil {
		onFail(err)
	}
}

// failureByte is the progress byte that tells the shims sharing the fill how it failed.
func failureByte(err error) byte {
	switch {
	case errors.Is(err, storage.ErrCorrupt):
		return failedCorrupt
	case errors.Is(err, ErrStalled):
		return failedStalled
	}
	return failedOther
}

// sharedFailure is the error of a shim sharing a fill whose filler gave it up: progress
// byte b (failureByte) at frame i.
func (f *File) sharedFailure(i int, b byte) error {
	switch b {
	case failedCorrupt:
		return storage.Corruptf(f.url, "frame %d failed verification at the shim that fills this snapshot", i)
	case failedStalled:
		return &StallError{URL: f.url, Frame: i, After: f.stall}
	}
	return fmt.Errorf("%s: frame %d: the shim that fills this snapshot could not fetch it", f.url, i)
}

// Failed is closed when the file has failed (Err says why).
func (f *File) Failed() <-chan struct{} { return f.failedCh }

// poll reads the progress file and takes up the frames another process made present.
// At the filler it also queues the frames other processes want; at a shim sharing the
// fill it fails the file the way the filler's failed, once the filler gave it up.
func (f *File) poll() error {
	buf := make([]byte, f.x.Len())
	if _, err := f.prog.ReadAt(buf, 0); err != nil && err != io.EOF {
		return fmt.Errorf("progress of %s: %w", f.url, err)
	}
	f.mu.Lock()
	failedAt, failure := -1, byte(0)
	for i, b := range buf {
		switch {
		case b == present && !f.have[i]:
			f.setHave(i)
		case b == wanted && f.fetch != nil && !f.have[i] && !f.busy[i]:
			f.busy[i] = true
			go f.fetchOne(f.ctx, i)
		case b >= failedCorrupt && f.fetch == nil && !f.have[i] && failedAt < 0:
			failedAt, failure = i, b
		}
	}
	f.mu.Unlock()
	if failedAt >= 0 {
		f.fail(f.sharedFailure(failedAt, failure))
	}
	return nil
}

// Retry policy of a frame fetch. A frame that fails its check, or is not there (the
// object ends early), is fetched once more, then the file fails: the stored snapshot is
// bad. A fetch during which no byte arrives for stallAfter is abandoned as stalled and
// the frame fetched once more, then the file fails: the store stopped answering. Other
// errors (the store unreachable) are retried with backoff until fetchGiveUp has passed.
// A restored sandbox waits for its pages meanwhile, so these bound how long a fault
// leaves it hanging before its reads fail and the pod ends: at most 2 x stallAfter for a
// store that holds the connection open without a byte, fetchGiveUp for one that refuses.
const (
	stallAfter   = 10 * time.Second
	fetchGiveUp  = 30 * time.Second
	fetchBackoff = 200 * time.Millisecond
)

// ErrStalled is matched (errors.Is) by the error of a fetch during which no byte arrived
// for the stall deadline: the store holds the read open without answering. The error is
// a *StallError.
var ErrStalled = errors.New("the store stopped answering")

// StallError says which frame of which object the store stalled on.
type StallError struct {
	URL   string
	Frame int
	After time.Duration // the stall deadline that passed
}

func (e *StallError) Error() string {
	return fmt.Sprintf("%s: frame %d: %v: no byte arrived in %s", e.URL, e.Frame, ErrStalled, e.After)
}

// Is reports whether target is ErrStalled.
func (e *StallError) Is(target error) bool { return target == ErrStalled }

// fetchOne fetches frame i with the retry policy, failing the file if it cannot.
func (f *File) fetchOne(ctx context.Context, i int) {
	if err := f.fetchRetrying(ctx, i, 1); err != nil && ctx.Err() == nil {
		f.fail(err)
	}
}

// fetchRetrying fetches frames [first, first+n) and, on error, each frame not yet there
// on its own with the retry policy, all within one fetchGiveUp for errors that are
// neither corruption nor a stall.
func (f *File) fetchRetrying(ctx context.Context, first, n int) error {
	err := f.attempt(ctx, first, n)
	if err == nil {
		return nil
	}
	deadline := time.Now().Add(fetchGiveUp)
	for i := first; i < first+n; i++ {
		if f.has(i) {
			continue
		}
		if err := f.refetch(ctx, i, err, deadline); err != nil {
			return err
		}
	}
	return nil
}

// refetch fetches frame i on its own after a fetch of it failed with prev, with the
// retry policy; errors that are neither corruption nor a stall are retried until
// deadline.
func (f *File) refetch(ctx context.Context, i int, prev error, deadline time.Time) error {
	corrupt, stalled := errors.Is(prev, storage.ErrCorrupt), errors.Is(prev, ErrStalled)
	for {
		err := f.attempt(ctx, i, 1)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, storage.ErrCorrupt):
			if corrupt {
				return fmt.Errorf("%s: frame %d failed verification twice: %w", f.url, i, err)
			}
			corrupt = true
			continue
		case errors.Is(err, ErrStalled):
			if stalled {
				return fmt.Errorf("%s: frame %d: fetched twice, %w", f.url, i, err)
			}
			stalled = true
			continue
		case ctx.Err() != nil || time.Now().After(deadline):
			return fmt.Errorf("%s: frame %d: %w", f.url, i, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(fetchBackoff):
		}
	}
}

// attempt is one fetch of frames [first, first+n) under the stall deadline: it fails
// with ErrStalled when no byte arrives for f.stall (a slow store that still sends is not
// stalled), without waiting for the fetch to notice its cancelled context (a read stuck
// in the kernel may not).
func (f *File) attempt(ctx context.Context, first, n int) error {
	f.mu.Lock()
	fetch := f.fetch
	f.mu.Unlock()
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	arrived := make(chan struct{}, 1)
	alive := func() {
		select {
		case arrived <- struct{}{}:
		default:
		}
	}
	done := make(chan error, 1)
	go func() {
		done <- fetch(actx, first, n, func(i int) { f.markPresent(i); alive() }, alive)
	}()
	t := time.NewTimer(f.stall)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-arrived:
			t.Reset(f.stall)
		case <-t.C:
			next := first
			for next < first+n-1 && f.has(next) {
				next++
			}
			return &StallError{URL: f.url, Frame: next, After: f.stall}
		}
	}
}

// has reports whether frame i is there.
func (f *File) has(i int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.have[i]
}

// setFetch makes this process the filler of the file.
func (f *File) setFetch(fetch fetchFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fetch = fetch
}
