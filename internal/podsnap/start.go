package podsnap

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/log"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/internal/report"
)

// Start runs created task t of the pod: the sandbox restores from its snapshot or starts
// (cold after a failed fetch or restore), a container joins the restore its pod waits
// for, or starts as usual. On success t runs (or waits for its pod's restore) and has
// been reported Started and watched; on error the caller ends it (255). For a nil Pod
// (no policy) it is a plain `runsc start`.
func (p *Pod) Start(ctx context.Context, t Task) error {
	if p == nil {
		return launch(ctx, t)
	}
	if t != p.sb {
		if handled, err := p.startDeferred(ctx, t); handled {
			return err
		}
		if mb := p.memberOf(t); mb != nil && mb.layered {
			p.startMemberOnLayer(ctx, mb)
		}
		return launch(ctx, t)
	}
	if p.deferRestore(ctx) {
		// The sandbox waits for its containers before it restores.
		t.Started()
		return nil
	}
	return p.restoreOrStart(ctx)
}

// launch starts t as any container starts (`runsc start`) and reports it running.
func launch(ctx context.Context, t Task) error {
	if err := t.Launch(ctx, nil); err != nil {
		return err
	}
	t.Started()
	t.Watch()
	return nil
}

// restoreOrStart runs the created sandbox: `runsc restore` from the fetched snapshot when
// the pod has one of the sandbox alone, else `runsc start`. A failed restore tears the
// sandbox down and starts the pod cold from the same bundle.
func (p *Pod) restoreOrStart(ctx context.Context) error {
	m, f := p.restoring()
	if m == nil {
		return p.launch(ctx, p.sb)
	}
	if m.RootfsOnly() {
		return p.startOnLayers(ctx, m, f)
	}
	id := p.sb.ID()
	why, fetched := f.await(ctx, p.namespace, p.entry.ID())
	if fetched {
		if !f.cached {
			decide(ctx, id, "restore", why)
		}
		t0 := time.Now()
		err := p.sb.Launch(ctx, f.restoreImage(p.cfg))
		if err == nil {
			p.running(p.sb)
			p.logRestored(ctx, m, f, 1, 0, time.Since(t0))
			p.guardRestored(ctx, m, f)
			return nil
		}
		why = fmt.Sprintf("runsc restore from snapshot %s/%s failed: %v", p.namespace, m.UUID, f.explain(err))
	} else if p.sb.Exited() {
		return fmt.Errorf("container %s was killed while its snapshot downloaded", id)
	}
	reason := report.ReasonRestoreFailed
	switch {
	case !fetched:
		reason = f.failReason()
	case f.corrupt() != nil:
		reason = report.ReasonCorrupt
	}
	decide(ctx, id, "cold start", why)
	// After a failed restore the files may be what failed: the next restore downloads
	// them afresh.
	p.dropRestore(fetched)
	// After a failed download nothing has run in the sandbox, and it is what a cold start
	// of a manual policy creates (only a workload trigger changes the spec): start it.
	return p.startSandboxCold(ctx, fetched || p.workloadTriggered(), reason, why)
}

// startSandboxCold starts the sandbox cold after its snapshot was given up (reason, why: the
// cold-start report's), made afresh first when remake is set (`runsc restore` or start
// ran, or the workload trigger's annotations must be given at create).
func (p *Pod) startSandboxCold(ctx context.Context, remake bool, reason, why string) error {
	if remake {
		err := p.recreate(ctx)
		p.reportColdStart(ctx, reason, why)
		if err != nil {
			return err
		}
	} else {
		p.reportColdStart(ctx, reason, why)
	}
	return p.launch(ctx, p.sb)
}

// launch starts a task of the pod (`runsc start`) and watches it. For a sandbox whose
// workload may checkpoint itself, the checkpoint watch is armed first: a workload that
// triggers the moment it runs is then never missed.
func (p *Pod) launch(ctx context.Context, t Task) error {
	var watch <-chan error
	cancel := func() {}
	if _, ok := p.checkpointTarget(); ok && t == p.sb {
		watch, cancel = p.armWatch()
	}
	if err := t.Launch(ctx, nil); err != nil {
		cancel()
		return err
	}
	p.running(t)
	if watch != nil {
		go p.watchCheckpoints(watch, cancel)
	}
	return nil
}

// armWatch starts a watch for the workload's next checkpoint of the sandbox; cancel
// ends it.
func (p *Pod) armWatch() (<-chan error, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	return p.sb.WatchCheckpoint(ctx), cancel
}

// running reports task t running and watches its exit.
func (p *Pod) running(t Task) {
	t.Started()
	t.Watch()
}

// recreate replaces a created (or half-restored) sandbox with a fresh `runsc create` from
// the same bundle, for a cold start.
func (p *Pod) recreate(ctx context.Context) error {
	if err := p.sb.Destroy(ctx); err != nil {
		return fmt.Errorf("tear down sandbox %s after a failed restore: %w", p.sb.ID(), err)
	}
	if p.workloadTriggered() {
		if err := p.enableWorkloadTrigger(); err != nil {
			log.G(ctx).WithError(err).Warn("workload trigger not enabled")
		}
	}
	return p.sb.Create(ctx)
}

// logRestored logs the event line of a restore of n containers: its time since the
// lookup began (Create of the sandbox), of which the download (alongside runsc create),
// the wait for the pod's containers (CRI) and runsc restore; and records, in the
// background, that the snapshot was used.
func (p *Pod) logRestored(ctx context.Context, m *manifest.Manifest, f *fetch, n int, waited, restore time.Duration) {
	pod, waitedPart := "", ""
	if n > 1 {
		pod = fmt.Sprintf(" with %d containers", n)
		waitedPart = fmt.Sprintf(", waited for containers %d ms", waited.Milliseconds())
	}
	total := time.Since(p.lookupStart)
	msg := fmt.Sprintf("Successfully restored the pod from PodSnapshot %s/%s%s in %d ms (download %d ms%s, runsc restore %d ms)",
		p.namespace, m.UUID, pod, total.Milliseconds(), f.took.Milliseconds(), waitedPart, restore.Milliseconds())
	log.G(ctx).WithFields(log.Fields{"id": p.sb.ID(), "decision": "restored", "reason": v1.EventReason}).Infof(
		"podsnapshot: restored: %s", msg)
	p.reportRestored(ctx, m, f, total, msg)
	p.touchLater(ctx, m)
}

// touchLater records, in the background, that m was used to restore (Repo.Touch). It
// touches a copy: the containers of a rootfs-only restore each record their start, at
// once, and Touch sets the manifest's LastAccessTime.
func (p *Pod) touchLater(ctx context.Context, shared *manifest.Manifest) {
	m := *shared
	p.touches.Add(1)
	go func() {
		defer p.touches.Done()
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := p.repo.Touch(tctx, &m); err != nil {
			log.G(ctx).WithError(err).Warn("could not record the snapshot's last access time")
		}
	}()
}

// Kill is called before task t of the pod is signalled. It reports true when it has
// dealt with the kill itself: t was waiting for the pod's deferred restore and has
// ended. Otherwise the caller signals t through runsc; killing a stop-mode sandbox
// abandons its snapshot, and killing a sandbox that never started cancels its download.
func (p *Pod) Kill(ctx context.Context, t Task, signal int, started bool) bool {
	if p == nil {
		return false
	}
	if p.killDeferred(ctx, t, signal) {
		return true
	}
	if t != p.sb {
		return false
	}
	if p.stop {
		// A stop-mode sandbox killed while it saves or uploads its snapshot ends now, as
		// a killed task: the snapshot is abandoned.
		p.abandon(signal)
	}
	if !started {
		// It can never run now, so the snapshot it was to restore is not needed.
		_, f := p.restoring()
		f.abort()
	}
	return false
}

// StoppedByCheckpoint reports whether the sandbox is gone because a postCheckpoint: stop
// checkpoint ended it: a kill that runsc could not deliver then did its job.
func (p *Pod) StoppedByCheckpoint(t Task) bool {
	return p != nil && t == p.sb && p.stop && p.tookCheckpoint.Load()
}

// Delete is called when task t of the pod is deleted, after runsc has removed it. A
// container waiting for the pod's restore leaves it (the rest of the pod starts cold).
// For the sandbox, an upload still running is abandoned (no manifest is written) and
// given a few seconds to delete what it uploaded, so Delete finishes in bounded time; a
// snapshot UUID reserved for a checkpoint that never came is reported failed; then the
// pod's work dir goes.
func (p *Pod) Delete(ctx context.Context, t Task) {
	if p == nil {
		return
	}
	if t != p.sb {
		p.leaveDeferred(ctx, t)
		p.Leave(t)
		return
	}
	p.abandon(9)
	p.waitCommits(10 * time.Second)
	p.giveUpReserved(ctx)
	p.cleanup()
}
