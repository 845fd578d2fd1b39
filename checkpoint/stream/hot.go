package stream

// Hot frames first (REAP, FaaSnap). gVisor's page loader (`runsc restore --background`,
// pkg/sentry/pgalloc save_restore.go, AsyncPagesFileLoad.main) reads pages.img in file
// order: it keeps up to 128 reads of 256 KiB in flight from the lowest offset it has not
// started (minUnstarted; the application's memory file first, then the private ones, in
// the order they were saved, so the offsets only grow), and puts ahead of them the
// ranges an application thread faults on (awaitLoad → priority). Through the FUSE mount
// those prioritised reads are the ones that jump ahead of the sequential reads: the
// recorder keeps the frames of every read that starts more than seqWindow past the
// loader's frontier (the first frame no sequential read has reached), in first-demand
// order, deduplicated, at most MaxHotFrames. Only frames reached one after another move
// the frontier, so a workload touching memory every few MiB ahead of the loader does not
// drag it along; a frame the loader never reads (its pages freed before it got there, or
// loaded whole by a fault) is passed once the skipRun frames after it are reached. (A
// workload that reads its memory densely and in order just ahead of the loader looks
// like it, and is not recorded.) It records from the sandbox's first read of pages.img
// (the restore started; the mount may be up long before, e.g. while a pod of several
// containers waits for them) until the file is complete (nothing waits any more) or
// recordFor has passed (the workload is taken to be ready by then). The first restore
// that recorded frames, finding no list stored, writes it next to the snapshot
// (Source.HotFrames, PutIfAbsent: once); later restores that stream read it and have the
// background fill fetch those frames first (File.fill), so that the workload's first
// touches wait less often for a round trip per frame. A list that cannot be read or
// verified is ignored: the pages then arrive in order, as without one.
//
// One restore sees only part of the hot set: a page the loader reached before the
// workload touched it is read in order, not as a fault (on the 2 GiB bench workload
// about half of it). A restore that used a list therefore records too, and when it saw
// hot frames the list lacks, stores the list with them appended (Put): the next restore
// fetches those first as well. The list only grows, by frames read out of the loader's
// order, up to maxHotShare of the frames (appended frames past it are dropped), so a
// snapshot's list is rewritten a bounded number of times; two restores appending at once
// may lose one's frames, which a later restore records again (on Cloud Storage a second
// write of one object within a second may be refused: logged, nothing else). A frame
// once listed stays listed: deleting the snapshot is the only reset.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/podsnapshot/podsnapshot/storage"
)

const (
	// recordFor is how long after the sandbox's first read of pages.img the recorder
	// keeps recording: long enough for a workload to fault in what it needs to serve,
	// short enough that what it touches later (a periodic job, a full scan) does not
	// crowd the list.
	recordFor = 10 * time.Second
	// seqWindow is how far past its frontier the loader's own reads may start: its 128
	// reads of 256 KiB in flight span 32 MiB and arrive in any order; twice that.
	seqWindow = 64 << 20
	// skipRun is how many frames after a frame no sequential read reached must be reached
	// for the frontier to pass it: the loader went on without it. Faults a few MiB
	// apart do not reach that many in a row.
	skipRun = 4
	// hotLoadWait bounds the read of a stored list; the fill waits for it (it starts at
	// Open, alongside the small files, so it is usually long done).
	hotLoadWait = 5 * time.Second
	// hotSaveWait bounds the write of a recorded list.
	hotSaveWait = 10 * time.Second
	// maxHotShare is the largest share of the frames a list may hold to be stored: past
	// it, fetching the list first is hardly another order than the file's, and a list
	// that long more likely means the recorder lost the loader (a gap longer than the
	// window) than that the workload touched half its memory in its first seconds.
	maxHotShare = 0.5
)

// recorder collects the hot frames of one restore (see above).
type recorder struct {
	x *storage.FrameIndex
	// window is seqWindow (tests set a smaller one before the sandbox reads).
	window int64
	// firstRead is closed at the first read recorded.
	firstRead chan struct{}

	mu sync.Mutex
	// The fields below are guarded by mu.
	reading bool      // a read was seen (firstRead is closed)
	started time.Time // when
	stopped bool      // stop was called: reads are no longer recorded
	reached []bool    // frame touched by a sequential read
	low     int       // the frontier: the first frame not reached (nor passed)
	seen    []bool    // frame already in hot
	hot     []int     // frames in first-demand order
}

func newRecorder(x *storage.FrameIndex) *recorder {
	return &recorder{x: x, window: seqWindow, firstRead: make(chan struct{}),
		reached: make([]bool, x.Len()), seen: make([]bool, x.Len())}
}

// read records a read of the n > 0 bytes at off (within the file).
func (r *recorder) read(off, n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return
	}
	if !r.reading {
		r.reading, r.started = true, time.Now()
		close(r.firstRead)
	}
	first, last := r.x.Frames(off, n)
	if off <= r.x.RawOffset(r.low)+r.window {
		// The loader's own read, or one close enough ahead of it to arrive as soon.
		for i := first; i <= last; i++ {
			r.reached[i] = true
		}
		r.advance()
		return
	}
	for i := first; i <= last; i++ {
		// Loaded by the fault: the loader's pass skips it, so it counts as reached (else
		// the frontier would stop before it, and every later read of the loader would
		// look like a fault).
		r.reached[i] = true
	}
	for i := first; i <= last && len(r.hot) < MaxHotFrames; i++ {
		if !r.seen[i] {
			r.seen[i] = true
			r.hot = append(r.hot, i)
		}
	}
}

// advance moves the frontier past the frames reached, and past a gap of frames not
// reached (shorter than the window) once the skipRun frames after it are: the loader
// went on without them (a fault loaded them, or their memory was freed). Called with mu
// held.
func (r *recorder) advance() {
	n := len(r.reached)
	span := int(r.window/r.x.Info().FrameSize) + 1
	for r.low < n {
		if r.reached[r.low] {
			r.low++
			continue
		}
		j := r.low + 1
		for j < min(n, r.low+span) && !r.reached[j] {
			j++
		}
		if j+skipRun > n {
			return
		}
		for i := j; i < j+skipRun; i++ {
			if !r.reached[i] {
				return
			}
		}
		r.low = j
	}
}

// stop ends the recording and returns the hot frames in first-demand order and how long
// it recorded (0 if the sandbox never read).
func (r *recorder) stop() ([]int, time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	if !r.reading {
		return nil, 0
	}
	return r.hot, time.Since(r.started)
}

// hotLoad is the stored list of a restore, read in the background from Open on.
type hotLoad struct {
	name string        // the list's object name
	done chan struct{} // closed once the read ended
	// Written before done is closed, read after it.
	list []int // the verified list; nil: none usable
	// absent: the store holds no list, or one that fails DecodeHotList (bad, or of an
	// older format): this restore may record one, replacing a bad one.
	absent  bool
	replace bool // the stored list is bad: the new one replaces it (Put, not PutIfAbsent)
}

// loadHot starts reading src's stored list of x's frames, within ctx and hotLoadWait. A
// list that cannot be read or fails DecodeHotList is logged and ignored.
func loadHot(ctx context.Context, src Source, x *storage.FrameIndex) *hotLoad {
	h := &hotLoad{name: src.HotFrames, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		lctx, cancel := context.WithTimeout(ctx, hotLoadWait)
		defer cancel()
		list, err := readHotList(lctx, src.Store, h.name, x)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			h.absent = true
		case errors.Is(err, ErrBadHotList):
			h.absent, h.replace = true, true
			log.L.WithError(err).Warnf("podsnapshot: hot-frame list %s ignored, to be recorded again; the pages of this restore arrive in order", src.Store.URL(h.name))
		case err != nil && ctx.Err() == nil:
			log.L.WithError(err).Warnf("podsnapshot: hot-frame list %s ignored; the pages of this restore arrive in order", src.Store.URL(h.name))
		case err == nil:
			h.list = list
		}
	}()
	return h
}

// readHotList reads and verifies the list at object name. Errors: the store's (wrapping
// storage.ErrNotFound when there is none), or DecodeHotList's.
func readHotList(ctx context.Context, st storage.Store, name string, x *storage.FrameIndex) ([]int, error) {
	rc, err := st.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, MaxHotListBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", st.URL(name), err)
	}
	list, err := DecodeHotList(data, x)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", st.URL(name), err)
	}
	return list, nil
}

// hotFrames waits for the stored list (bounded by hotLoadWait) and returns the frames
// the fill fetches first: nil without a usable list, or when ctx ended.
func (img *Image) hotFrames(ctx context.Context) []int {
	if img.hot == nil {
		return nil
	}
	select {
	case <-img.hot.done:
		return img.hot.list
	case <-ctx.Done():
		return nil
	}
}

// recordHot records this restore's hot frames (recorder) and, when the store holds no
// list yet, writes them there; when it holds one this restore used, it appends the
// frames recorded that the list lacks. It returns when that is done, the file failed or
// ctx ended; nothing it meets fails the restore (it logs why no list was written).
func (img *Image) recordHot(ctx context.Context, src Source, x *storage.FrameIndex) {
	f := img.pages
	rec := f.rec
	if rec == nil || img.hot == nil {
		return
	}
	select {
	case <-img.hot.done:
	case <-ctx.Done():
		return
	}
	known := img.hot.list
	if !img.hot.absent && known == nil {
		rec.stop() // the store could not tell whether it holds a list
		return
	}
	ended := f.endedCh()
	select {
	case <-rec.firstRead:
	case <-ended:
	case <-ctx.Done():
		return
	}
	t := time.NewTimer(recordFor)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ended:
	case <-ctx.Done():
		return
	}
	recorded, took := rec.stop()
	added := newFrames(known, recorded)
	if known != nil {
		// A list that grows stops at the limit a first list must stay under.
		limit := min(MaxHotFrames, int(maxHotShare*float64(x.Len())))
		added = added[:max(0, min(len(added), limit-len(known)))]
	}
	hot := append(slices.Clone(known), added...)
	url := src.Store.URL(img.hot.name)
	switch {
	case f.Err() != nil:
		return
	case len(added) == 0 && known != nil:
		log.L.WithField("hot_frames", len(known)).Infof("podsnapshot: hot-frame list %s kept: no frame read out of the loader's order beyond its %d, or it is full", url, len(known))
		return
	case len(added) == 0:
		log.L.Debugf("podsnapshot: no hot frames recorded for %s: the sandbox read its pages in order", url)
		return
	case float64(len(hot)) > maxHotShare*float64(x.Len()) || len(hot) > MaxHotFrames:
		log.L.Infof("podsnapshot: hot-frame list %s not stored: %d of %d frames read out of the loader's order is no order of its own",
			url, len(hot), x.Len())
		return
	}
	sctx, cancel := context.WithTimeout(ctx, hotSaveWait)
	defer cancel()
	if err := saveHot(sctx, src, x, hot, img.hot.replace || known != nil); err != nil {
		if errors.Is(err, storage.ErrExists) {
			log.L.Infof("podsnapshot: hot-frame list %s was stored by another restore first", url)
			return
		}
		log.L.WithError(err).Warnf("podsnapshot: hot-frame list %s not stored", url)
		return
	}
	log.L.WithFields(log.Fields{"hot_frames": len(hot), "added_frames": len(added), "record_ms": took.Milliseconds()}).
		Infof("podsnapshot: hot frames recorded: %d frames of %s read out of the loader's order in the first %.1f s, %d of them new; stored as %s",
			len(recorded), src.Store.URL(x.Info().Name), took.Seconds(), len(added), url)
}

// newFrames returns the frames of recorded not in known, in recorded's order.
func newFrames(known, recorded []int) []int {
	in := make(map[int]bool, len(known))
	for _, i := range known {
		in[i] = true
	}
	var added []int
	for _, i := range recorded {
		if !in[i] {
			added = append(added, i)
		}
	}
	return added
}

// saveHot writes hot as src's list unless one exists (an error wrapping
// storage.ErrExists), or over a bad one (replace), after src.HotFramesCheck allowed it.
// Should the snapshot have been deleted meanwhile (its deletion listed its objects before
// this write), the check fails afterwards and the list is removed again: no object
// outlives its snapshot.
func saveHot(ctx context.Context, src Source, x *storage.FrameIndex, hot []int, replace bool) error {
	data, err := EncodeHotList(x, hot)
	if err != nil {
		return err
	}
	if src.HotFramesCheck != nil {
		if err := src.HotFramesCheck(ctx); err != nil {
			return fmt.Errorf("the snapshot cannot take it: %w", err)
		}
	}
	if replace {
		_, err = src.Store.Put(ctx, src.HotFrames, bytes.NewReader(data))
	} else {
		_, err = src.Store.PutIfAbsent(ctx, src.HotFrames, bytes.NewReader(data))
	}
	if err != nil {
		return err
	}
	if src.HotFramesCheck != nil {
		if cerr := src.HotFramesCheck(ctx); cerr != nil {
			if derr := src.Store.Delete(context.WithoutCancel(ctx), src.HotFrames); derr != nil && !errors.Is(derr, storage.ErrNotFound) {
				return fmt.Errorf("the snapshot went while its list was written (%v), and removing the list failed: %w", cerr, derr)
			}
			return fmt.Errorf("the snapshot went while its list was written: %w", cerr)
		}
	}
	return nil
}

// endedCh is the channel closed once every frame is there or the file failed.
func (f *File) endedCh() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ended
}
