package stream

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"

	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/storage"
)

// The sequential download: FillWorkers ranged reads at a time, each of FillBatch frames
// (16 MiB of raw pages at the default frame size). Cloud Storage serves one connection
// at about 60 MB/s (docs/benchmarks-floors.md) and a VM of a few vCPUs several hundred:
// 8 reads in flight reach about 480 MB/s where 4 stopped at 224 (make bench, shaped
// store, 2 GiB). Exported so that the bench measures the store the way the fill reads it.
const (
	FillWorkers = 8
	FillBatch   = 4
)

// pollEvery is how often a shim reads the shared progress file while frames are
// missing: a shim that does not fill sees frames arrive, the filler sees frames the
// others want. takeOverEvery is how often a shim that does not fill checks whether the
// filler died (its lock is free) to take its place.
const (
	pollEvery     = 2 * time.Millisecond
	takeOverEvery = 100 * time.Millisecond
)

// run brings every frame of pages.img into the fill, as its filler or waiting for the
// filler (and taking over should it die), then, as the filler, publishes the fill as the
// node cache entry (every frame was verified as it came in).
func (img *Image) run(ctx context.Context, src Source, x *storage.FrameIndex, raw int64) {
	defer close(img.done)
	f := img.pages
	t0 := time.Now()
	var hot []int
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		img.recordHot(ctx, src, x)
	}()
	defer func() { <-recorded }()
	defer func() {
		frames, stored := f.Fetched()
		img.mu.Lock()
		synced := img.synced
		img.mu.Unlock()
		log.L.WithFields(log.Fields{"frames": x.Len(), "fetched_frames": frames, "fetched_bytes": stored, "hot_frames_first": len(hot),
			"complete": f.Complete(), "ms": time.Since(t0).Milliseconds(), "sync_ms": synced.Milliseconds()}).
			Infof("podsnapshot: pages of %s: %d of %d frames fetched by this shim, the others shared by another restoring the same snapshot",
				src.Store.URL(x.Info().Name), frames, x.Len())
	}()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(pollEvery)
		defer t.Stop()
		for !f.Complete() {
			select {
			case <-t.C:
				_ = f.poll()
			case <-stop:
				return
			}
		}
	}()
	for img.filling() == nil {
		if f.Complete() || f.Err() != nil || ctx.Err() != nil {
			return
		}
		if fl, ok := src.Cache.TakeOver(img.fillDir, src.Key, raw); ok {
			_, err := os.Stat(filepath.Join(img.fillDir, linkedFile))
			f.setFetch(fillFetcher(src.Store, x, img.data, err == nil, fl))
			img.mu.Lock()
			img.fill = fl
			img.mu.Unlock()
			log.L.Infof("podsnapshot: took over the download of %s from a shim that ended", src.Store.URL(x.Info().Name))
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(takeOverEvery):
		}
	}
	// A linked fill's bytes are on the node already (only verified): no order saves a
	// round trip, and 16 verifiers would compete with the sandbox for the CPU.
	if hot = img.hotFrames(ctx); len(hot) > 0 && f.linked {
		hot = nil
	}
	if len(hot) > 0 {
		log.L.WithField("hot_frames", len(hot)).Infof("podsnapshot: hot frames first: fetching the %d frames of %s that %s lists before the rest",
			len(hot), src.Store.URL(x.Info().Name), src.Store.URL(img.hot.name))
	}
	f.fill(ctx, FillWorkers, FillBatch, hot)
	if f.Err() != nil {
		img.bad()
		return
	}
	if ctx.Err() != nil {
		return
	}
	img.publish()
}

// filling is the fill this shim holds, or nil.
func (img *Image) filling() *cache.Filling {
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.fill
}

// bad removes the fill of a file that failed (its onFail told OnCorrupt).
func (img *Image) bad() {
	img.mu.Lock()
	fl := img.fill
	img.fill = nil
	img.mu.Unlock()
	if fl != nil {
		fl.Abort()
	}
}

// publish makes the complete fill the node cache entry (a private fill stays this
// shim's until Close).
func (img *Image) publish() {
	// The fill is taken out under mu and published without it: Publish fsyncs the
	// fill (seconds for gigabytes) and waits for the cache lock, and Close, which takes
	// mu after at most closeWait, must not wait for that.
	img.mu.Lock()
	fl := img.fill
	if fl == nil || fl.Private {
		img.mu.Unlock()
		return
	}
	img.fill = nil
	img.mu.Unlock()
	os.Remove(filepath.Join(fl.Dir, progressFile))
	os.Remove(filepath.Join(fl.Dir, linkedFile))
	entry, err := fl.Publish()
	img.mu.Lock()
	defer img.mu.Unlock()
	img.synced = fl.Synced
	if err != nil {
		log.L.WithError(err).Warn("podsnapshot: the streamed snapshot was not kept in the node cache")
		return
	}
	img.published = entry
}

// closeWait bounds how long Close waits for the background download to stop.
const closeWait = 10 * time.Second

// Close unmounts the image (lazily: a sandbox still holding pages.img open keeps reading
// it), stops the download and lets go of the fill: a private one is removed, a shared one
// is left to the shims still restoring from it (one of them takes it over).
func (img *Image) Close() {
	if img == nil || img.Cached {
		return
	}
	img.mnt.unmount()
	img.cancel()
	select {
	case <-img.done:
	case <-time.After(closeWait):
		log.L.Warnf("podsnapshot: the snapshot download into %s has not stopped after %s", img.fillDir, closeWait)
	}
	img.mu.Lock()
	fl := img.fill
	img.fill = nil
	img.mu.Unlock()
	if fl != nil {
		if fl.Private {
			fl.Abort()
		} else {
			fl.Release()
		}
	}
	img.closeFiles()
}

// Err is why pages.img cannot be read, or nil: a frame that failed verification twice
// or is not in the object (an error wrapping storage.ErrCorrupt), a store that stopped
// answering (ErrStalled) or kept failing; each names the object and the frame.
func (img *Image) Err() error {
	if img == nil || img.pages == nil {
		return nil
	}
	return img.pages.Err()
}

// Failed is closed when pages.img has become unreadable (Err says why); a restored
// sandbox can then no longer load its memory. Never closed for a cached image.
func (img *Image) Failed() <-chan struct{} {
	if img == nil || img.pages == nil {
		return nil
	}
	return img.pages.Failed()
}

// Done is closed when the snapshot has fully arrived (or the download ended), and the
// hot-frame list this restore recorded, if any, was written (hot.go).
func (img *Image) Done() <-chan struct{} { return img.done }

// Published is the node cache entry the streamed snapshot became, or "".
func (img *Image) Published() string {
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.published
}
