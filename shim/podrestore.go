package shim

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/log"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/runtime/runsc"
)

// The deferred restore of a pod of several containers (CRI).
//
// Under CRI the sandbox (pause) container is created and started by RunPodSandbox before
// containerd has heard of the pod's other containers, which kubelet then creates and starts
// one after another. A snapshot holds every container of the pod, and runsc restores them
// together: `runsc restore` of the root container registers it and waits; `runsc create`
// and `runsc restore` of each other container register them; the last one restores the
// kernel. So when the snapshot found at the sandbox's Create records other containers:
//
//   - Start of the sandbox reports it running but runs nothing: the sandbox process that
//     `runsc create` made waits.
//   - Create of a container compares it with the snapshot's record: a container of that
//     name and snapshot key (snapkey.ContainerKey) is recorded as arrived and not yet
//     created in runsc; Start of it is recorded too. containerd sees tasks as usual.
//   - Once every recorded container has arrived and been started, the pod is restored in
//     one go, in arrival order.
//   - A container that differs from the record or is not in it, a recorded container that
//     has not arrived within restore_wait_seconds of the last arrival, a waiting
//     container killed or deleted, or a restore that fails: the pod starts cold instead,
//     transparently. The sandbox is created afresh
//     (workload trigger enabled) and started, then every container that arrived is
//     created, and started if its Start came. Nothing the restore began is left behind.
//
// A container that arrives after the pod was restored joins the running sandbox as any
// container does; it is not part of the restored state.

// deferredState is where a deferred restore stands.
type deferredState int

const (
	deferWaiting   deferredState = iota // containers still to arrive
	deferRestored                       // the pod was restored
	deferCold                           // the pod was started cold instead
	deferAbandoned                      // a task of the pod was killed while waiting
)

// deferredRestore is the deferred restore of one sandbox.
type deferredRestore struct {
	// mu serializes the pod's transitions: arrivals, the restore, the cold start and
	// Kill of a waiting container. It is held while those run runsc commands (never
	// together with Service.mu, which is taken inside it).
	mu    sync.Mutex
	state deferredState
	// recorded are the containers of the snapshot, besides the sandbox.
	recorded []manifest.ContainerKey
	// arrived are the containers recorded as arrived, in arrival order; started holds
	// the IDs of those whose Start came.
	arrived []*container
	started map[string]bool
	timer   *time.Timer
	// resolved is closed when the wait ends, whichever way.
	resolved chan struct{}
	// waitingSince is when the sandbox's Start came, for the log; lastArrival is when
	// the wait last began again (the sandbox's Start, then each arrival or Start).
	waitingSince, lastArrival time.Time
}

// pendingIn reports whether c is a container of a deferred restore that runsc has not
// run yet: the waiting sandbox, or a container recorded as arrived.
func (d *deferredRestore) pendingIn(c *container) bool {
	if d == nil {
		return false
	}
	if c.sandbox {
		// An abandoned restore leaves the sandbox created and never started.
		return d.state == deferWaiting || d.state == deferAbandoned
	}
	if d.state != deferWaiting {
		return false
	}
	for _, a := range d.arrived {
		if a == c {
			return true
		}
	}
	return false
}

// resolve ends the wait in state st.
func (d *deferredRestore) resolve(st deferredState) {
	d.state = st
	if d.timer != nil {
		d.timer.Stop()
	}
	close(d.resolved)
}

// deferRestore makes the Start of sandbox sb, which restores from a snapshot of several
// containers, wait for them (see above). It reports false when the snapshot has only the
// sandbox, which restores at once.
func (s *Service) deferRestore(ctx context.Context, sb *container) bool {
	ps := sb.snap
	if ps == nil || ps.restore == nil || len(ps.restore.Containers) == 0 {
		return false
	}
	// The download has run alongside runsc create; the sandbox's Start waits for the
	// rest of it here, so that the restore of the pod (under d.mu, which Kill and Delete
	// of its containers take) never waits for storage. A failed download is a cold
	// start at once (restoreOrStart).
	why, ok := ps.awaitDownload(ctx)
	if !ok {
		return false
	}
	if ps.downloaded != nil {
		decide(ctx, sb.id, "restore", why)
	}
	d := &deferredRestore{
		recorded:     ps.restore.Containers,
		started:      map[string]bool{},
		resolved:     make(chan struct{}),
		waitingSince: time.Now(),
	}
	d.lastArrival = d.waitingSince
	d.mu.Lock()
	defer d.mu.Unlock()
	ps.deferred.Store(d)
	d.timer = time.AfterFunc(sb.cfg.RestoreWait(), func() { s.restoreTimedOut(sb) })
	log.G(ctx).WithField("id", sb.id).Infof("podsnapshot: restore of snapshot %s/%s waits for containers %s",
		ps.namespace, ps.restore.UUID, recordedNames(d.recorded))
	return true
}

// joinDeferred is called at Create of container c in sandbox sb. While sb's restore
// waits, a container that matches the snapshot's record is recorded as arrived (it
// reports true: runsc is not to create it now); any other container starts the pod cold
// first (it reports false, as when nothing waits: c is created as usual).
func (s *Service) joinDeferred(ctx context.Context, sb, c *container) bool {
	d := sb.snap.deferred.Load()
	if d == nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != deferWaiting {
		return false
	}
	if why := d.mismatch(c); why != "" {
		s.startCold(ctx, sb, why)
		return false
	}
	d.arrived = append(d.arrived, c)
	d.lastArrival = time.Now()
	d.timer.Reset(sb.cfg.RestoreWait())
	c.init.pid = sb.init.pid // a container's pid is its sandbox's
	log.G(ctx).WithFields(log.Fields{"id": c.id, "container": c.name}).Infof(
		"podsnapshot: container %s arrived for the restore (%d of %d)", c.name, len(d.arrived), len(d.recorded))
	return true
}

// mismatch says why c cannot be part of the restore, or "".
func (d *deferredRestore) mismatch(c *container) string {
	if c.keyErr != nil {
		return fmt.Sprintf("container %s cannot be compared with the snapshot: %v", c.name, c.keyErr)
	}
	for _, a := range d.arrived {
		if a.name == c.name {
			return fmt.Sprintf("container %s arrived twice", c.name)
		}
	}
	for _, r := range d.recorded {
		if r.Name != c.name {
			continue
		}
		if c.key != r.Key {
			return fmt.Sprintf("container %s differs from the one in the snapshot (image, args, env, mounts or gVisor annotations changed)", c.name)
		}
		return ""
	}
	return fmt.Sprintf("container %s is not in the snapshot (it has %s)", c.name, recordedNames(d.recorded))
}

// startDeferred is called at Start of container c. It reports false when c is not
// waiting for a restore (Start runs it as usual). Otherwise it records the Start and,
// when that completes the pod, restores it (or starts it cold if the restore fails).
func (s *Service) startDeferred(ctx context.Context, c *container) (bool, error) {
	sb, d := s.deferredOf(c)
	if d == nil {
		return false, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.pendingIn(c) {
		return false, nil
	}
	d.started[c.id] = true
	d.lastArrival = time.Now()
	d.timer.Reset(sb.cfg.RestoreWait())
	c.init.setStatus(task.Status_RUNNING)
	// TaskStart goes out before the restore can make the container run (and exit).
	s.send(&eventstypes.TaskStart{ContainerID: c.id, Pid: uint32(c.init.pid)})
	if len(d.arrived) < len(d.recorded) {
		return true, nil
	}
	for _, a := range d.arrived {
		if !d.started[a.id] {
			return true, nil
		}
	}
	// The restore (or the cold start after it) is the pod's, not this call's: it
	// finishes even if the caller gives up waiting.
	s.restorePod(context.WithoutCancel(ctx), sb)
	if c.init.exited() {
		return true, fmt.Errorf("container %s could not be started after the pod's restore failed", c.id)
	}
	return true, nil
}

// restorePod restores sandbox sb and every arrived container from the snapshot; on
// failure it tears down what the restore began and starts the pod cold. d.mu is held.
func (s *Service) restorePod(ctx context.Context, sb *container) {
	ps, d := sb.snap, sb.snap.deferred.Load()
	t0 := time.Now()
	var created []*container
	err := func() error {
		if err := s.launch(ctx, sb, ps.restoreDir); err != nil {
			return fmt.Errorf("runsc restore of sandbox %s: %w", sb.id, err)
		}
		for _, c := range d.arrived {
			if err := s.runscCreate(ctx, c); err != nil {
				return err
			}
			created = append(created, c)
			if err := s.launch(ctx, c, ps.restoreDir); err != nil {
				return fmt.Errorf("runsc restore of container %s (%s): %w", c.name, c.id, err)
			}
		}
		return nil
	}()
	if err != nil {
		for i := len(created) - 1; i >= 0; i-- {
			c := created[i]
			if derr := c.runsc.Delete(context.WithoutCancel(ctx), c.id, runsc.DeleteOpts{Force: true}); derr != nil && !runsc.IsNotExist(derr) {
				log.G(ctx).WithError(derr).WithField("id", c.id).Warn("tear down container after a failed restore")
			}
			c.init.io.close()
		}
		why := fmt.Sprintf("restore from snapshot %s/%s failed: %v", ps.namespace, ps.restore.UUID, err)
		// The files may be what failed: the next restore downloads them afresh.
		os.RemoveAll(ps.restoreDir)
		s.startCold(ctx, sb, why)
		return
	}
	d.resolve(deferRestored)
	s.running(sb)
	for _, c := range d.arrived {
		s.running(c)
	}
	ps.logRestored(ctx, sb.id, len(d.arrived)+1, t0.Sub(d.waitingSince), time.Since(t0))
}

// startCold gives up the restore of sandbox sb and starts the pod cold: a fresh sandbox,
// then every arrived container (started if its Start came). d.mu is held. A container
// that cannot be started is marked exited (255), as a failed Start would be.
func (s *Service) startCold(ctx context.Context, sb *container, why string) {
	ctx = context.WithoutCancel(ctx) // the pod's start, whoever's call brought it about
	ps, d := sb.snap, sb.snap.deferred.Load()
	decide(ctx, sb.id, "cold start", why)
	ps.dropRestore()
	// Calls waiting for the pod (exec, ps, ...) go on once its containers run.
	defer d.resolve(deferCold)
	if err := s.recreate(ctx, sb); err != nil {
		log.G(ctx).WithError(err).WithField("id", sb.id).Error("podsnapshot: the pod cannot start cold")
		s.failPod(sb, d.arrived)
		return
	}
	if err := s.launch(ctx, sb, ""); err != nil {
		log.G(ctx).WithError(err).WithField("id", sb.id).Error("podsnapshot: the pod cannot start cold")
		s.failPod(sb, d.arrived)
		return
	}
	s.running(sb)
	for _, c := range d.arrived {
		if err := enableMemberTrigger(sb, c); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Warn("the container cannot trigger the pod's checkpoint")
		}
		if err := s.runscCreate(ctx, c); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Error("podsnapshot: container cannot be created after the cold start")
			s.exitProcess(c, c.init, 255)
			continue
		}
		if !d.started[c.id] {
			continue // its Start runs it as usual
		}
		if err := s.launch(ctx, c, ""); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Error("podsnapshot: container cannot start after the cold start")
			s.exitProcess(c, c.init, 255)
			continue
		}
		s.running(c)
	}
}

// failPod marks the sandbox and its arrived containers exited when the pod could not be
// started at all.
func (s *Service) failPod(sb *container, arrived []*container) {
	for _, c := range arrived {
		s.exitProcess(c, c.init, 255)
	}
	s.exitProcess(sb, sb.init, 255)
}

// restoreTimedOut starts the pod of sandbox sb cold when recorded containers did not
// arrive (or were not started) within restore_wait_seconds.
func (s *Service) restoreTimedOut(sb *container) {
	d := sb.snap.deferred.Load()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != deferWaiting {
		return
	}
	if left := sb.cfg.RestoreWait() - time.Since(d.lastArrival); left > 0 {
		// A container arrived while this timer fired: wait the rest of its time.
		d.timer.Reset(left)
		return
	}
	var missing []string
	for _, r := range d.recorded {
		found := false
		for _, a := range d.arrived {
			if a.name == r.Name && d.started[a.id] {
				found = true
			}
		}
		if !found {
			missing = append(missing, r.Name)
		}
	}
	s.startCold(s.ctx, sb, fmt.Sprintf("containers %s of snapshot %s/%s were not created and started within %v",
		strings.Join(missing, ", "), sb.snap.namespace, sb.snap.restore.UUID, sb.cfg.RestoreWait()))
}

// killDeferred kills container c if runsc has not run it because its pod's restore
// waits (or, for the sandbox, waited and was abandoned). It reports whether c was such a
// container; it has then exited, with 128+signal.
//
// Killing the sandbox abandons the restore: the pod is going away, so every container
// that arrived ends with it and nothing is restored or started. Killing one arrived
// container (kubelet does so when a probe fails or the container is replaced) takes it
// out of the restore, which needs every recorded container, and starts the rest of the
// pod cold, so the sandbox runs for the container kubelet creates next.
func (s *Service) killDeferred(ctx context.Context, c *container, signal int) bool {
	sb, d := s.deferredOf(c)
	if d == nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.pendingIn(c) {
		return false
	}
	if !c.sandbox {
		d.remove(c)
		s.exitProcess(c, c.init, 128+signal)
		s.startCold(ctx, sb, fmt.Sprintf("container %s was killed while the pod waited for its containers", c.name))
		return true
	}
	if d.state == deferWaiting {
		log.G(ctx).WithField("id", sb.id).Infof("podsnapshot: restore abandoned: the sandbox was killed while the pod waited for its containers")
		d.resolve(deferAbandoned)
		sb.snap.dropRestore()
		for _, a := range d.arrived {
			s.exitProcess(a, a.init, 128+signal)
		}
	}
	// Created, never started: runsc ends the sandbox process; Delete removes it.
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	_ = c.runsc.Kill(kctx, c.id, runsc.KillOpts{Signal: signal, All: true})
	cancel()
	s.exitProcess(c, c.init, 128+signal)
	return true
}

// remove takes c out of the arrived containers.
func (d *deferredRestore) remove(c *container) {
	for i, a := range d.arrived {
		if a == c {
			d.arrived = append(d.arrived[:i], d.arrived[i+1:]...)
			return
		}
	}
}

// leaveDeferred is called at Delete of container c: a container that arrived for a
// restore still waiting is taken out of it, and the pod starts cold without it, since
// the restore needs every recorded container.
func (s *Service) leaveDeferred(ctx context.Context, c *container) {
	sb, d := s.deferredOf(c)
	if d == nil || c.sandbox {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.pendingIn(c) {
		return
	}
	d.remove(c)
	s.startCold(ctx, sb, fmt.Sprintf("container %s was deleted before the pod's restore", c.name))
}

// awaitResolved waits, for a call that needs container c running in runsc (exec, ps,
// stats, pause, checkpoint), until its pod's deferred restore is resolved, or ctx ends.
func (s *Service) awaitResolved(ctx context.Context, c *container) error {
	_, d := s.deferredOf(c)
	if d == nil {
		return nil
	}
	select {
	case <-d.resolved:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("container %s waits for its pod's restore: %w", c.id, ctx.Err())
	}
}

// deferredOf returns the sandbox of container c and its deferred restore; nil when the
// pod has none.
func (s *Service) deferredOf(c *container) (*container, *deferredRestore) {
	sb, err := s.get(c.sandboxID)
	if err != nil || sb.snap == nil {
		return nil, nil
	}
	return sb, sb.snap.deferred.Load()
}

// recordedNames lists the recorded containers' names, sorted, for messages.
func recordedNames(rec []manifest.ContainerKey) string {
	names := make([]string, len(rec))
	for i, r := range rec {
		names[i] = r.Name
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// dropRestore forgets the snapshot the sandbox was to restore from; a private download
// is removed.
func (ps *podSnap) dropRestore() {
	if ps.restore == nil {
		return
	}
	done := ps.stopDownload()
	ps.restore = nil
	if done && ps.ownRestoreDir {
		os.RemoveAll(ps.restoreDir)
		ps.ownRestoreDir = false
	}
}
