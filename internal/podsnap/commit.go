package podsnap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/snapkey"
	"github.com/podsnapshot/podsnapshot/internal/report"
	"github.com/podsnapshot/podsnapshot/storage"
)

// errAbandoned is the commit result of a snapshot given up because its task was killed
// or deleted.
var errAbandoned = errors.New("snapshot abandoned: the task was killed or deleted")

// watchCheckpoints waits for the workload's checkpoint of the sandbox, on the watch
// armed before the sandbox started, and commits it; cancel ends the watch's `runsc wait`.
//
// runsc opens the image files once, when the sandbox is created, and every checkpoint of
// the sandbox writes into those same files. So the lifecycle commits the first
// successful checkpoint straight from the checkpoint directory and then stops watching;
// runsc refuses later triggers (the workload's write fails and it reads "error"). A
// failed save (the wait returns its error while the sandbox keeps running; the workload
// reads "error") is logged and reported (CheckpointFailed, using up the snapshot's
// UUID), uploads nothing, and a new watch is armed.
func (p *Pod) watchCheckpoints(watch <-chan error, cancel context.CancelFunc) {
	defer func() { cancel() }() // the watch armed last
	ctx := context.Background()
	dir, _ := p.checkpointTarget()
	// The save runs in the sandbox, whenever the workload triggers it: follow its files
	// from now on (inotify: nothing to do while they are not written).
	stopWriteback := p.followWriteback(dir)
	defer stopWriteback()
	for {
		err := <-watch
		if err != nil && !p.savedBeforeStop() {
			// The wait also fails when the sandbox goes away; its exit follows shortly.
			select {
			case <-p.sandboxGone:
				return
			case <-time.After(time.Second):
			}
			log.L.WithError(err).WithFields(log.Fields{"id": p.sb.ID(), "reason": v1.EventReason}).
				Warn("podsnapshot: checkpoint failed: the workload read \"error\" and keeps running; nothing uploaded")
			p.reportCheckpointFailed(ctx, p.takeSnapshot(), fmt.Sprintf("the workload's checkpoint failed: %v", err))
			// What the failed save wrote is of no use; runsc keeps the files open for the
			// next save, so they are emptied, not removed, and a full disk is full no more.
			discardImage(dir, true)
			time.Sleep(100 * time.Millisecond)
			cancel()
			watch, cancel = p.armWatch()
			continue
		}
		p.busy.Lock()
		stopWriteback()
		if p.stop {
			p.tookCheckpoint.Store(true)
		}
		t0 := time.Now()
		uuid := p.takeSnapshot()
		p.rep.write(ctx, report.Report{Kind: report.CheckpointStarted, Snapshot: uuid})
		if p.rootfsOnly() {
			err = p.commitRootfsAfterTrigger(ctx, uuid, dir, t0)
		} else {
			_, err = p.commit(uuid, dir, t0)
		}
		if errors.Is(err, errLayersNotSaved) {
			// The sandbox was not stopped: it runs on, as after a failed save.
			p.tookCheckpoint.Store(false)
			p.busy.Unlock()
			return
		}
		p.busy.Unlock()
		if p.stop {
			p.result <- err
		}
		return
	}
}

// savedBeforeStop tells, after `runsc wait --checkpoint` failed, whether it failed only
// because a postCheckpoint: stop checkpoint succeeded and the sandbox then exited before
// the wait could be answered: the sandbox is gone within a few seconds and the image is
// not empty. A failed save leaves the sandbox running.
func (p *Pod) savedBeforeStop() bool {
	if !p.stop {
		return false
	}
	select {
	case <-p.sandboxGone:
	case <-time.After(3 * time.Second):
		return false
	}
	return p.imageWritten()
}

// discardImage frees the disk a checkpoint image in dir holds: its files are emptied
// (runsc may hold them open, and emptying frees their blocks where removing would not)
// and, unless keep is set, removed with dir.
func discardImage(dir string, keep bool) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Type().IsRegular() {
			_ = os.Truncate(filepath.Join(dir, e.Name()), 0)
		}
	}
	if !keep {
		os.RemoveAll(dir)
	}
}

// imageWritten reports whether the workload-trigger image holds a saved checkpoint.
func (p *Pod) imageWritten() bool {
	dir, _ := p.checkpointTarget()
	if dir == "" {
		return false
	}
	fi, err := os.Stat(filepath.Join(dir, "checkpoint.img"))
	return err == nil && fi.Size() > 0
}

// Checkpoint takes a snapshot of the pod on request (containerd's Checkpoint call,
// `podsnapshot checkpoint`): `runsc checkpoint` of the sandbox, then the commit. It
// returns the committed manifest; at most one checkpoint of a pod runs at a time. Each
// call that gets past that check has its snapshot UUID (the reserved one, else a fresh
// one) and ends in a CheckpointCommitted or CheckpointFailed report.
func (p *Pod) Checkpoint(ctx context.Context) (*manifest.Manifest, error) {
	if !p.busy.TryLock() {
		return nil, fmt.Errorf("a checkpoint of sandbox %s is already in progress", p.sb.ID())
	}
	defer p.busy.Unlock()
	t0 := time.Now()
	uuid := p.takeSnapshot()
	dir := filepath.Join(p.workDir, "manual-"+t0.UTC().Format("20060102T150405.000000000"))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		err = fmt.Errorf("checkpoint image directory: %w", err)
		p.reportCheckpointFailed(ctx, uuid, err.Error())
		return nil, err
	}
	if p.stop {
		p.tookCheckpoint.Store(true)
	}
	p.rep.write(ctx, report.Report{Kind: report.CheckpointStarted, Snapshot: uuid})
	save := func() error { return p.sb.Checkpoint(ctx, dir, !p.stop) }
	if p.rootfsOnly() {
		save = func() error { return p.saveRootfs(ctx, dir, p.stop) }
	}
	stopWriteback := p.followWriteback(dir)
	err := save()
	stopWriteback()
	if err != nil {
		p.tookCheckpoint.Store(false)
		os.RemoveAll(dir)
		p.reportCheckpointFailed(ctx, uuid, err.Error())
		return nil, err
	}
	m, err := p.commit(uuid, dir, t0)
	if p.stop {
		p.result <- err
	}
	return m, err
}

// commit uploads a checkpoint image directory as snapshot uuid of the pod, then applies
// the policy's retention; the directory is removed only after the manifest is stored.
// started is when the checkpoint began. It reports the outcome before retention runs:
// CheckpointCommitted, or CheckpointFailed with the error.
func (p *Pod) commit(uuid, dir string, started time.Time) (_ *manifest.Manifest, err error) {
	id := p.sb.ID()
	defer func() {
		if err == nil {
			return
		}
		l := log.L.WithError(err).WithFields(log.Fields{"id": id, "reason": v1.EventReason, "snapshot": uuid})
		if errors.Is(err, errAbandoned) {
			l.Warn("podsnapshot: checkpoint not committed")
		} else {
			l.Error("podsnapshot: checkpoint not committed")
		}
		p.reportCheckpointFailed(context.Background(), uuid, err.Error())
	}()
	ctx, cancel := context.WithCancel(context.Background())
	p.cancelMu.Lock()
	if p.abandoned != 0 {
		p.cancelMu.Unlock()
		cancel()
		return nil, errAbandoned
	}
	p.cancel = cancel
	p.commits.Add(1)
	p.cancelMu.Unlock()
	defer p.commits.Done()
	defer func() {
		p.cancelMu.Lock()
		p.cancel = nil
		p.cancelMu.Unlock()
		cancel()
	}()
	t0 := time.Now()
	key, members, infos, err := p.podKey()
	if err != nil {
		discardImage(dir, false)
		return nil, err
	}
	m := manifest.New(p.namespace, p.policyName(), key, p.tuple, t0)
	m.UUID = uuid
	m.Scope = p.scope()
	if len(members) > 0 {
		m.SandboxKey = p.sandboxKey
		m.Containers = members
	}
	m.Labels = p.labels
	m.GroupLabels = snapkey.GroupValues(p.entry.Policy.GroupLabels(), p.labels)
	m.Source = p.source
	m.Source.Containers = append(m.Source.Containers[:1:1], infos...)
	if err := p.repo.Commit(ctx, m, dir); err != nil {
		// A snapshot that cannot be stored is lost either way (no other upload of it
		// follows): its image must not keep the node's disk full until the pod goes.
		discardImage(dir, false)
		return nil, err
	}
	upload := time.Since(t0)
	if err := os.RemoveAll(dir); err != nil {
		log.L.WithError(err).Warn("remove uploaded checkpoint image")
	}
	raw, stored := m.Sizes()
	msg := fmt.Sprintf("Successfully checkpointed the pod to PodSnapshot %s/%s", m.Namespace, m.UUID)
	log.L.WithFields(log.Fields{"id": id, "reason": v1.EventReason, "snapshot": m.UUID,
		"raw_bytes": raw, "stored_bytes": stored, "upload_ms": upload.Milliseconds()}).
		Infof("podsnapshot: committed: %s", msg)
	p.rep.write(ctx, report.Report{Kind: report.CheckpointCommitted, Snapshot: m.UUID, StoragePath: p.storagePath(m),
		Message: msg, Seconds: time.Since(started).Seconds(), UploadSeconds: upload.Seconds(), StoredBytes: stored})
	p.applyRetention(ctx)
	return m, nil
}

// applyRetention deletes the policy's snapshots beyond its maxSnapshotCountPerGroup and
// those unused for longer than its lastAccessTimeout (repo.ApplyRetention, as
// `podsnapshot gc` does).
func (p *Pod) applyRetention(ctx context.Context) {
	rules, err := p.entry.Policy.RetentionRules()
	if err != nil {
		return
	}
	deleted, err := p.repo.ApplyRetention(ctx, p.namespace, p.policyName(), rules, time.Now())
	for _, d := range deleted {
		log.L.Infof("podsnapshot: retention: deleted snapshot %s/%s: %s", p.namespace, d.ID, d.Reason)
		// Under Kubernetes the agent deletes its PodSnapshot too.
		p.rep.write(ctx, report.Report{Kind: report.SnapshotDeleted, Snapshot: d.ID, Message: "retention: " + d.Reason})
	}
	if err != nil {
		log.L.WithError(err).Warn("podsnapshot: retention")
	}
}

// SandboxExited is called when the sandbox's init has exited with status. When a
// checkpoint with postCheckpoint: stop ended it, it waits for that snapshot's commit and
// returns the task's exit status: 0 once committed, 1 if the commit failed, 128+signal if
// the task was killed meanwhile. Otherwise it returns status.
func (p *Pod) SandboxExited(status int) int {
	if p == nil {
		return status
	}
	p.sandboxGoneOnce.Do(func() { close(p.sandboxGone) })
	if !p.stop || (!p.tookCheckpoint.Load() && !p.imageWritten()) {
		return status
	}
	// Either a commit is under way (result follows), or the watcher is about to decide
	// that the image it finds was saved before the stop.
	var err error
	select {
	case err = <-p.result:
	case <-time.After(10 * time.Second):
		if !p.tookCheckpoint.Load() {
			return status
		}
		err = <-p.result
	}
	if sig := p.abandonedBy(); sig != 0 {
		return 128 + sig // killed while it saved or uploaded: as any killed task
	}
	if err != nil {
		return 1
	}
	return 0
}

// abandon cancels the commit in progress, if any, and any commit not yet started;
// signal is what ended the task (recorded for a stop-mode task's exit status).
func (p *Pod) abandon(signal int) {
	p.cancelMu.Lock()
	defer p.cancelMu.Unlock()
	if p.abandoned == 0 {
		p.abandoned = signal
	}
	if p.cancel != nil {
		p.cancel()
	}
}

// abandonedBy returns the signal that abandoned the snapshot, 0 if none did.
func (p *Pod) abandonedBy() int {
	p.cancelMu.Lock()
	defer p.cancelMu.Unlock()
	return p.abandoned
}

// waitCommits waits up to timeout for aborted commits to finish deleting what they had
// uploaded, so that a deleted sandbox leaves no orphaned objects in storage.
func (p *Pod) waitCommits(timeout time.Duration) {
	done := make(chan struct{})
	go func() { p.commits.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		log.L.Warnf("podsnapshot: an aborted upload is still cleaning up after %s; leaving it", timeout)
	}
}

// followWriteback starts storage.FollowWriteback on the checkpoint image directory dir
// when the pod's store may adopt its files: a local store on dir's filesystem, which
// adopts an image file stored uncompressed (repo.Repo.MinRatio); its pages then go to
// disk while the save runs, not in the fsync after it. For any other store the image is
// read once and deleted, and its pages need not reach the disk. (An image that then
// compresses well is written back for nothing: the save cannot tell in advance.)
func (p *Pod) followWriteback(dir string) (stop func()) {
	st, ok := p.repo.Store.(interface {
		storage.Adopter
		Root() string
	})
	if !ok || dir == "" || !sameFilesystem(dir, st.Root()) {
		return func() {}
	}
	return storage.FollowWriteback(dir)
}

// sameFilesystem says whether paths a and b lie on one filesystem (false if either
// cannot be read).
func sameFilesystem(a, b string) bool {
	var sa, sb unix.Stat_t
	return unix.Stat(a, &sa) == nil && unix.Stat(b, &sb) == nil && sa.Dev == sb.Dev
}
