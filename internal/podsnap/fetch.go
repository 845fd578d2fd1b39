package podsnap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/stream"
	"github.com/podsnapshot/podsnapshot/internal/config"
	"github.com/podsnapshot/podsnapshot/internal/report"
	"github.com/podsnapshot/podsnapshot/storage"
)

// fetch brings the snapshot a pod restores from onto the node: at once from the node
// cache, or by a download that runs alongside `runsc create` and whatever containerd does
// before Start.
type fetch struct {
	m      *manifest.Manifest
	cached bool // found in the node cache at Create: done is closed already
	// done is closed once the fetch is over. The fields below it are written before
	// done is closed and read only after.
	done   chan struct{}
	cancel context.CancelFunc
	// failed says why the fetch failed ("" when it did not); err is that error.
	failed string
	err    error
	dir    string // a node cache entry, or a private download when private
	// private: dir is this pod's alone (the cache is disabled) and is removed with it.
	private bool
	// img is set when the snapshot streams: dir is its FUSE mount (or the cache entry
	// it found), closed with the pod.
	img  *stream.Image
	took time.Duration
}

// restoreImage is what runsc restores from once the fetch succeeded: dir, read with
// O_DIRECT when cfg.RestoreDirect (restore_direct) and dir holds plain files (a node
// cache entry, a private download); a streaming image's FUSE mount is read as it is
// (its pages file is already FOPEN_DIRECT_IO, and the mount's reads wait for frames).
func (f *fetch) restoreImage(cfg config.Config) *RestoreImage {
	streams := f.img != nil && !f.img.Cached
	return &RestoreImage{Dir: f.dir, Direct: cfg.RestoreDirect && !streams && directReadable(f.dir)}
}

// noDirect logs once per shim that the node cache's file system refuses O_DIRECT.
var noDirect sync.Once

// directReadable tells whether dir's pages.img can be opened with O_DIRECT. A file
// system without it (tmpfs before Linux 6.6, some network ones) refuses the open with
// EINVAL, and `runsc restore --direct` would then fail every restore into a cold start;
// such a dir is restored without --direct (logged once). Other errors say yes: the
// restore meets and reports them itself.
func directReadable(dir string) bool {
	fd, err := unix.Open(filepath.Join(dir, "pages.img"), unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err == nil {
		// Some file systems take the open and refuse the reads: read one aligned page
		// (an anonymous mapping is page-aligned, as O_DIRECT wants its buffer).
		err = readOneDirect(fd)
		unix.Close(fd)
	}
	if err == nil {
		return true
	}
	if !errors.Is(err, unix.EINVAL) {
		return true
	}
	noDirect.Do(func() {
		log.L.WithError(err).WithField("dir", dir).Warn("podsnapshot: the node cache's file system refuses O_DIRECT; restores read it through the page cache (restore_direct has no effect)")
	})
	return false
}

// readOneDirect reads the first page of the O_DIRECT descriptor fd into a page-aligned
// buffer; a file shorter than a page reads short, which is no error.
func readOneDirect(fd int) error {
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil // no buffer to try with: keep the open's verdict
	}
	defer unix.Munmap(buf)
	_, err = unix.Pread(fd, buf, 0)
	return err
}

// noFUSE logs once per shim that streaming is unavailable.
var noFUSE sync.Once

// downloadStopTimeout bounds how long Delete waits for a cancelled download to end.
const downloadStopTimeout = 10 * time.Second

// find looks up the snapshot to restore: the one named by the ps-name annotation
// (psName), else the newest compatible one for the sandbox key. It returns the reason for
// the decision in words, and whether the pod restores; when it does not, reason
// classifies why (report.Reason*); when it does, p.restore and p.fetch are set and the
// download, if any, runs in the background.
func (p *Pod) find(ctx context.Context, psName string) (why, reason string, restores bool) {
	t0 := time.Now()
	p.lookupStart = t0
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	var (
		m   *manifest.Manifest
		err error
	)
	if psName != "" {
		m, why, err = p.repo.FindNamed(lctx, p.namespace, p.policyName(), psName, p.sandboxKey, p.tuple)
		if why != "" {
			why = fmt.Sprintf("%s (annotation %s)", why, PSNameAnnotation)
		}
	} else {
		m, why, err = p.repo.Find(lctx, p.namespace, p.policyName(), p.sandboxKey, p.tuple)
	}
	url := p.repo.Store.URL("")
	if err != nil {
		if lctx.Err() != nil {
			return fmt.Sprintf("storage %s unreachable after %.1f s: %v", url, time.Since(t0).Seconds(), err), report.ReasonStorageUnreachable, false
		}
		return fmt.Sprintf("snapshot lookup in %s failed: %v", url, err), report.ReasonStorageUnreachable, false
	}
	if m == nil {
		return why, findReason(why), false
	}
	if m.ScopeName() != p.scope() {
		why = fmt.Sprintf("incompatible snapshot %s/%s: it holds scope %s, policy %s asks for %s",
			p.namespace, m.UUID, m.ScopeName(), p.entry.ID(), p.scope())
		return why, report.ReasonIncompatible, false
	}
	f := &fetch{m: m, done: make(chan struct{})}
	p.restore, p.fetch = m, f
	if dir, ok := p.repo.Cached(p.nodeCache, m); ok {
		f.cached, f.dir, f.took = true, dir, time.Since(t0)
		close(f.done)
		return fmt.Sprintf("snapshot %s/%s (policy %s) found in the node cache %s",
			p.namespace, m.UUID, p.entry.ID(), p.nodeCache.Dir), "", true
	}
	if why, reason, ok := p.probeStall(lctx, m); !ok {
		p.restore, p.fetch = nil, nil
		return why, reason, false
	}
	// The download outlives Create's RPC; Kill, Delete and a Start that gives up cancel it.
	dctx, dcancel := context.WithCancel(context.WithoutCancel(ctx))
	f.cancel = dcancel
	go func() {
		defer close(f.done)
		defer dcancel()
		if p.cfg.StreamRestore && !m.RootfsOnly() { // layers are read whole at start
			img, err := p.repo.Stream(dctx, p.nodeCache, m, filepath.Join(p.workDir, "image"))
			switch {
			case err == nil:
				f.took, f.dir, f.img = time.Since(t0), img.Dir, img
				return
			case errors.Is(err, stream.ErrNoFUSE):
				noFUSE.Do(func() {
					log.L.WithError(err).Warn("podsnapshot: FUSE cannot be mounted here; snapshots are downloaded whole before they restore")
				})
			case !errors.Is(err, stream.ErrNotStreamable):
				f.took = time.Since(t0)
				f.failed, f.err = err.Error(), err
				return
			}
		}
		dir, private, err := p.repo.Fetch(dctx, p.nodeCache, m)
		f.took = time.Since(t0)
		if err != nil {
			// Fetch says which: corrupt (and marked failed), or the download failed.
			f.failed, f.err = err.Error(), err
			return
		}
		f.dir, f.private = dir, private
	}()
	return fmt.Sprintf("snapshot %s/%s (policy %s) found in %d ms; downloading it while runsc creates the sandbox",
		p.namespace, m.UUID, p.entry.ID(), time.Since(t0).Milliseconds()), "", true
}

// await waits for the fetch, or for ctx to end (the download is then cancelled), and
// says, for the decision line, how it went: ok with its time, or why the pod starts cold.
func (f *fetch) await(ctx context.Context, namespace, policyID string) (why string, ok bool) {
	select {
	case <-f.done:
	case <-ctx.Done():
		f.stop()
		return fmt.Sprintf("gave up waiting for the download of snapshot %s/%s: %v", namespace, f.m.UUID, ctx.Err()), false
	}
	if f.failed != "" {
		return f.failed, false
	}
	if f.img != nil && f.img.Adopted {
		return fmt.Sprintf("snapshot %s/%s (policy %s): the local store's files, in memory, verified whole in %d ms and kept in the node cache %s (nothing to stream)",
			namespace, f.m.UUID, policyID, f.took.Milliseconds(), f.img.Dir), true
	}
	if f.img != nil && !f.img.Cached {
		return fmt.Sprintf("snapshot %s/%s (policy %s): checkpoint.img and pages_meta.img downloaded and verified in %d ms; pages.img streams from %s while the pod runs",
			namespace, f.m.UUID, policyID, f.took.Milliseconds(), f.img.Dir), true
	}
	return fmt.Sprintf("snapshot %s/%s (policy %s) downloaded and verified in %d ms",
		namespace, f.m.UUID, policyID, f.took.Milliseconds()), true
}

// corrupt is the error of a snapshot the fetch found corrupt (marked failed in storage:
// a file whose size or checksum is wrong, or a streamed frame bad or missing), or nil;
// nil too while the fetch is not over.
func (f *fetch) corrupt() error {
	select {
	case <-f.done:
	default:
		return nil
	}
	if errors.Is(f.err, storage.ErrCorrupt) {
		return f.err
	}
	if f.img == nil {
		return nil
	}
	if err := f.img.Err(); errors.Is(err, storage.ErrCorrupt) {
		return err
	}
	return nil
}

// explain adds to a failed restore's error what the stream found: runsc fails a restore
// whose pages file could not be read.
func (f *fetch) explain(err error) error {
	if cerr := f.corrupt(); cerr != nil {
		return fmt.Errorf("%w; the snapshot is corrupt (marked failed): %v", err, cerr)
	}
	return err
}

// failReason classifies, for the cold-start report, why a fetch that await did not
// report ok failed (report.Reason*): Other when await gave up before the fetch ended.
func (f *fetch) failReason() string {
	select {
	case <-f.done:
		return fetchReason(f.err)
	default:
		return report.ReasonOther
	}
}

// abort cancels a download still running, without waiting for it.
func (f *fetch) abort() {
	if f != nil && f.cancel != nil {
		f.cancel()
	}
}

// stop cancels a download still running and waits up to downloadStopTimeout for it to
// end. It reports whether the fetch is over; one that is not yet cleans up after itself
// (a cancelled download keeps no files).
func (f *fetch) stop() bool {
	if f == nil {
		return true
	}
	f.abort()
	select {
	case <-f.done:
		return true
	case <-time.After(downloadStopTimeout):
		log.L.Warnf("podsnapshot: the cancelled download of snapshot %s has not ended after %s; leaving it",
			f.m.UUID, downloadStopTimeout)
		return false
	}
}

// release stops the fetch and removes a private download. It reports whether the fetch
// is over (its fields may be read).
func (f *fetch) release() bool {
	if !f.stop() {
		return false
	}
	if f.img != nil {
		f.img.Close()
	}
	if f.private {
		os.RemoveAll(f.dir)
	}
	return true
}

// dropRestore forgets the snapshot the pod was to restore from (it starts cold); a
// private download is removed, and a snapshot the fetch found corrupt is reported
// (SnapshotFailed). When discard is set, the fetched files are removed even
// from the node cache: a restore from them failed, and they may be what failed.
func (p *Pod) dropRestore(discard bool) {
	p.mu.Lock()
	f := p.fetch
	p.restore, p.fetch = nil, nil
	p.mu.Unlock()
	if f == nil {
		return
	}
	if !f.release() {
		return
	}
	if err := f.corrupt(); err != nil {
		p.reportSnapshotFailed(context.Background(), f.m, err)
	}
	if !discard {
		return
	}
	dir := f.dir
	if f.img != nil && !f.img.Cached {
		dir = f.img.Published() // "" while pages.img was still arriving: nothing kept
	}
	if dir != "" && !f.private {
		if err := p.nodeCache.Discard(filepath.Base(dir)); err != nil {
			log.L.WithError(err).Warn("podsnapshot: could not remove the node cache entry of a failed restore")
		}
	}
}

// cleanup removes the pod's work dir and its private download: checkpoint images not
// committed are kept until here (nothing local is deleted before storage has it or the
// pod is gone).
func (p *Pod) cleanup() {
	p.mu.Lock()
	f := p.fetch
	p.mu.Unlock()
	if f != nil {
		f.release()
	}
	os.RemoveAll(p.workDir)
	p.owner.Release()
}
