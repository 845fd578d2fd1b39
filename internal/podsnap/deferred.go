package podsnap

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/internal/report"
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
//     transparently. The sandbox is created afresh (workload trigger enabled) and
//     started, then every container that arrived is created, and started if its Start
//     came. Nothing the restore began is left behind.
//
// A container that arrives after the pod was restored joins the running sandbox as any
// container does; it is not part of the restored state.

// deferredState is where a deferred restore stands.
type deferredState int

const (
	deferWaiting   deferredState = iota // containers still to arrive
	deferRestored                       // the pod was restored
	deferCold                           // the pod was started cold instead
	deferAbandoned                      // the sandbox was killed while waiting
)

// deferredRestore is the deferred restore of one pod.
type deferredRestore struct {
	// recorded are the containers of the snapshot, besides the sandbox; wait is
	// restore_wait_seconds. Both are set at creation and never change.
	recorded []manifest.ContainerKey
	wait     time.Duration
	// resolved is closed when the wait ends, whichever way.
	resolved chan struct{}

	// mu serializes the pod's transitions: arrivals, the restore, the cold start and
	// Kill of a waiting container; it guards the fields below. It is held while those
	// run runsc commands, and taken before any other lock of the pod.
	mu    sync.Mutex
	state deferredState
	// arrived are the containers recorded as arrived, in arrival order; started holds
	// the IDs of those whose Start came.
	arrived []*member
	started map[string]bool
	timer   *time.Timer
	// waitingSince is when the sandbox's Start came, for the log; lastArrival is when
	// the wait last began again (the sandbox's Start, then each arrival or Start).
	waitingSince, lastArrival time.Time
}

// pendingIn reports whether t is a task of the deferred restore that runsc has not run
// yet: the waiting sandbox (sandbox set), or a container recorded as arrived. d.mu is held.
func (d *deferredRestore) pendingIn(t Task, sandbox bool) bool {
	if d == nil {
		return false
	}
	if sandbox {
		// An abandoned restore leaves the sandbox created and never started.
		return d.state == deferWaiting || d.state == deferAbandoned
	}
	if d.state != deferWaiting {
		return false
	}
	return d.arrivedAs(t) != nil
}

// arrivedAs returns the arrived record of t, nil if t has not arrived. d.mu is held.
func (d *deferredRestore) arrivedAs(t Task) *member {
	for _, a := range d.arrived {
		if a.t == t {
			return a
		}
	}
	return nil
}

// resolve ends the wait in state st. d.mu is held.
func (d *deferredRestore) resolve(st deferredState) {
	d.state = st
	if d.timer != nil {
		d.timer.Stop()
	}
	close(d.resolved)
}

// remove takes t out of the arrived containers. d.mu is held.
func (d *deferredRestore) remove(t Task) {
	for i, a := range d.arrived {
		if a.t == t {
			d.arrived = append(d.arrived[:i], d.arrived[i+1:]...)
			return
		}
	}
}

// mismatch says why m cannot be part of the restore, or "". d.mu is held.
func (d *deferredRestore) mismatch(m *member) string {
	if m.keyErr != nil {
		return fmt.Sprintf("container %s cannot be compared with the snapshot: %v", m.name, m.keyErr)
	}
	for _, a := range d.arrived {
		if a.name == m.name {
			return fmt.Sprintf("container %s arrived twice", m.name)
		}
	}
	for _, r := range d.recorded {
		if r.Name != m.name {
			continue
		}
		if m.key != r.Key {
			return fmt.Sprintf("container %s differs from the one in the snapshot (image, args, env, mounts or gVisor annotations changed)", m.name)
		}
		return ""
	}
	return fmt.Sprintf("container %s is not in the snapshot (it has %s)", m.name, recordedNames(d.recorded))
}

// complete reports whether every recorded container has arrived and been started.
// d.mu is held.
func (d *deferredRestore) complete() bool {
	if len(d.arrived) < len(d.recorded) {
		return false
	}
	for _, a := range d.arrived {
		if !d.started[a.t.ID()] {
			return false
		}
	}
	return true
}

// missing names the recorded containers not yet arrived and started. d.mu is held.
func (d *deferredRestore) missing() []string {
	var names []string
	for _, r := range d.recorded {
		found := false
		for _, a := range d.arrived {
			if a.name == r.Name && d.started[a.t.ID()] {
				found = true
			}
		}
		if !found {
			names = append(names, r.Name)
		}
	}
	return names
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

// deferRestore makes the Start of the sandbox, which restores from a snapshot of several
// containers, wait for them (see above). It reports false when the snapshot has only the
// sandbox, which restores at once, or when its download failed (a cold start follows).
func (p *Pod) deferRestore(ctx context.Context) bool {
	m, f := p.restoring()
	if m == nil || len(m.Containers) == 0 || m.RootfsOnly() {
		return false // a rootfs-only pod's containers start one by one on their layers
	}
	// The download has run alongside runsc create; the sandbox's Start waits for the
	// rest of it here, so that the restore of the pod (under d.mu, which Kill and Delete
	// of its containers take) never waits for storage.
	why, ok := f.await(ctx, p.namespace, p.entry.ID())
	if !ok {
		return false
	}
	if !f.cached {
		decide(ctx, p.sb.ID(), "restore", why)
	}
	d := &deferredRestore{
		recorded:     m.Containers,
		wait:         p.cfg.RestoreWait(),
		started:      map[string]bool{},
		resolved:     make(chan struct{}),
		waitingSince: time.Now(),
	}
	d.lastArrival = d.waitingSince
	d.mu.Lock()
	defer d.mu.Unlock()
	p.deferred.Store(d)
	d.timer = time.AfterFunc(d.wait, func() { p.restoreTimedOut(context.WithoutCancel(ctx)) })
	log.G(ctx).WithField("id", p.sb.ID()).Infof("podsnapshot: restore of snapshot %s/%s waits for containers %s",
		p.namespace, m.UUID, recordedNames(d.recorded))
	return true
}

// joinDeferred is called at Create of member m. While the pod's restore waits, a
// container that matches the snapshot's record is recorded as arrived (it reports true:
// runsc is not to create it now); any other container starts the pod cold first (it
// reports false, as when nothing waits: m is created as usual).
func (p *Pod) joinDeferred(ctx context.Context, m *member) bool {
	d := p.deferred.Load()
	if d == nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != deferWaiting {
		return false
	}
	if why := d.mismatch(m); why != "" {
		p.startCold(ctx, d, report.ReasonSpecDiffers, why)
		return false
	}
	d.arrived = append(d.arrived, m)
	d.lastArrival = time.Now()
	d.timer.Reset(d.wait)
	log.G(ctx).WithFields(log.Fields{"id": m.t.ID(), "container": m.name}).Infof(
		"podsnapshot: container %s arrived for the restore (%d of %d)", m.name, len(d.arrived), len(d.recorded))
	return true
}

// startDeferred is called at Start of member t. It reports false when t is not waiting
// for a restore (Start runs it as usual). Otherwise it records the Start and, when that
// completes the pod, restores it (or starts it cold if the restore fails).
func (p *Pod) startDeferred(ctx context.Context, t Task) (bool, error) {
	d := p.deferred.Load()
	if d == nil {
		return false, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.pendingIn(t, false) {
		return false, nil
	}
	d.started[t.ID()] = true
	d.lastArrival = time.Now()
	d.timer.Reset(d.wait)
	// TaskStart goes out before the restore can make the container run (and exit).
	t.Started()
	if !d.complete() {
		return true, nil
	}
	// The restore (or the cold start after it) is the pod's, not this call's: it
	// finishes even if the caller gives up waiting.
	p.restorePod(context.WithoutCancel(ctx), d)
	if t.Exited() {
		return true, fmt.Errorf("container %s could not be started after the pod's restore failed", t.ID())
	}
	return true, nil
}

// restorePod restores the sandbox and every arrived container from the snapshot; on
// failure it tears down what the restore began and starts the pod cold. d.mu is held.
func (p *Pod) restorePod(ctx context.Context, d *deferredRestore) {
	m, f := p.restoring()
	t0 := time.Now()
	var created []*member
	err := func() error {
		if err := p.sb.Launch(ctx, f.restoreImage(p.cfg)); err != nil {
			return fmt.Errorf("runsc restore of sandbox %s: %w", p.sb.ID(), err)
		}
		for _, a := range d.arrived {
			if err := a.t.Create(ctx); err != nil {
				return err
			}
			created = append(created, a)
			if err := a.t.Launch(ctx, f.restoreImage(p.cfg)); err != nil {
				return fmt.Errorf("runsc restore of container %s (%s): %w", a.name, a.t.ID(), err)
			}
		}
		return nil
	}()
	if err != nil {
		for i := len(created) - 1; i >= 0; i-- {
			if derr := created[i].t.Destroy(ctx); derr != nil {
				log.G(ctx).WithError(derr).WithField("id", created[i].t.ID()).Warn("tear down container after a failed restore")
			}
		}
		// The files may be what failed: the next restore downloads them afresh.
		reason := report.ReasonRestoreFailed
		if f.corrupt() != nil {
			reason = report.ReasonCorrupt
		}
		why := fmt.Sprintf("restore from snapshot %s/%s failed: %v", p.namespace, m.UUID, f.explain(err))
		p.dropRestore(true)
		p.startCold(ctx, d, reason, why)
		return
	}
	d.resolve(deferRestored)
	p.running(p.sb)
	for _, a := range d.arrived {
		p.running(a.t)
	}
	p.logRestored(ctx, m, f, len(d.arrived)+1, t0.Sub(d.waitingSince), time.Since(t0))
	p.guardRestored(ctx, m, f)
}

// startCold gives up the restore and starts the pod cold: a fresh sandbox, then every
// arrived container (started if its Start came). reason (report.Reason*) and why say
// why, for the cold-start report and the decision line. d.mu is held. A container that
// cannot be started ends with 255, as a failed Start would.
func (p *Pod) startCold(ctx context.Context, d *deferredRestore, reason, why string) {
	ctx = context.WithoutCancel(ctx) // the pod's start, whoever's call brought it about
	decide(ctx, p.sb.ID(), "cold start", why)
	p.dropRestore(false)
	// Calls waiting for the pod (exec, ps, ...) go on once its containers run.
	defer d.resolve(deferCold)
	err := p.recreate(ctx)
	p.reportColdStart(ctx, reason, why)
	if err != nil {
		p.failPod(ctx, d, err)
		return
	}
	if err := p.launch(ctx, p.sb); err != nil {
		p.failPod(ctx, d, err)
		return
	}
	for _, a := range d.arrived {
		if err := p.enableMemberTrigger(a.t); err != nil {
			log.G(ctx).WithError(err).WithField("id", a.t.ID()).Warn("the container cannot trigger the pod's checkpoint")
		}
		if err := a.t.Create(ctx); err != nil {
			log.G(ctx).WithError(err).WithField("id", a.t.ID()).Error("podsnapshot: container cannot be created after the cold start")
			a.t.Exit(255)
			continue
		}
		if !d.started[a.t.ID()] {
			continue // its Start runs it as usual
		}
		if err := a.t.Launch(ctx, nil); err != nil {
			log.G(ctx).WithError(err).WithField("id", a.t.ID()).Error("podsnapshot: container cannot start after the cold start")
			a.t.Exit(255)
			continue
		}
		p.running(a.t)
	}
}

// failPod ends the sandbox and its arrived containers when the pod could not be started
// at all. d.mu is held.
func (p *Pod) failPod(ctx context.Context, d *deferredRestore, err error) {
	log.G(ctx).WithError(err).WithField("id", p.sb.ID()).Error("podsnapshot: the pod cannot start cold")
	for _, a := range d.arrived {
		a.t.Exit(255)
	}
	p.sb.Exit(255)
}

// restoreTimedOut starts the pod cold when recorded containers did not arrive (or were
// not started) within restore_wait_seconds.
func (p *Pod) restoreTimedOut(ctx context.Context) {
	d := p.deferred.Load()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != deferWaiting {
		return
	}
	if left := d.wait - time.Since(d.lastArrival); left > 0 {
		// A container arrived while this timer fired: wait the rest of its time.
		d.timer.Reset(left)
		return
	}
	m, _ := p.restoring()
	p.startCold(ctx, d, report.ReasonSpecDiffers, fmt.Sprintf("containers %s of snapshot %s/%s were not created and started within %v",
		strings.Join(d.missing(), ", "), p.namespace, m.UUID, d.wait))
}

// killDeferred kills task t if runsc has not run it because its pod's restore waits
// (or, for the sandbox, waited and was abandoned). It reports whether t was such a task;
// it has then exited, with 128+signal.
//
// Killing the sandbox abandons the restore: the pod is going away, so every container
// that arrived ends with it and nothing is restored or started. Killing one arrived
// container (kubelet does so when a probe fails or the container is replaced) takes it
// out of the restore, which needs every recorded container, and starts the rest of the
// pod cold, so the sandbox runs for the container kubelet creates next.
func (p *Pod) killDeferred(ctx context.Context, t Task, signal int) bool {
	d := p.deferred.Load()
	if d == nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	sandbox := t == p.sb
	if !d.pendingIn(t, sandbox) {
		return false
	}
	if !sandbox {
		name := d.arrivedAs(t).name
		d.remove(t)
		t.Exit(128 + signal)
		p.startCold(ctx, d, report.ReasonOther, fmt.Sprintf("container %s was killed while the pod waited for its containers", name))
		return true
	}
	if d.state == deferWaiting {
		log.G(ctx).WithField("id", t.ID()).Infof("podsnapshot: restore abandoned: the sandbox was killed while the pod waited for its containers")
		d.resolve(deferAbandoned)
		p.dropRestore(false)
		for _, a := range d.arrived {
			a.t.Exit(128 + signal)
		}
	}
	// Created, never started: runsc ends the sandbox process; Delete removes it.
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	_ = t.Kill(kctx, signal)
	cancel()
	t.Exit(128 + signal)
	return true
}

// leaveDeferred is called at Delete of member t: a container that arrived for a restore
// still waiting is taken out of it, and the pod starts cold without it, since the
// restore needs every recorded container.
func (p *Pod) leaveDeferred(ctx context.Context, t Task) {
	d := p.deferred.Load()
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.pendingIn(t, false) {
		return
	}
	name := d.arrivedAs(t).name
	d.remove(t)
	p.startCold(ctx, d, report.ReasonOther, fmt.Sprintf("container %s was deleted before the pod's restore", name))
}

// AwaitResolved waits, for a call that needs task t running in runsc (exec, ps, stats,
// pause, update, checkpoint), until its pod's deferred restore is resolved, or ctx ends.
func (p *Pod) AwaitResolved(ctx context.Context, t Task) error {
	if p == nil {
		return nil
	}
	d := p.deferred.Load()
	if d == nil {
		return nil
	}
	select {
	case <-d.resolved:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("container %s waits for its pod's restore: %w", t.ID(), ctx.Err())
	}
}
