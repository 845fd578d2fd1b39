package podsnap

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/log"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/internal/report"
	"github.com/podsnapshot/podsnapshot/storage"
)

// The one exception to "a snapshot problem never fails a pod": a streamed restore resumes
// the pod before its memory has arrived (checkpoint/stream), and a pod that runs can no
// longer start cold. Every fault that can be seen before it resumes is a cold start
// (restoreOrStart, restorePod); one found after it (a frame bad or missing in storage,
// or a store that stopped answering: stream.File's retry policy bounds how long that
// takes to say) ends the pod at once, with the reason, and a snapshot whose bytes were
// bad is marked Failed in storage (repo.Stream) so that the next pod starts cold.

// stopGrace is how long gVisor is given to stop a sandbox whose pages could not be read
// (runsc kills it itself once its page loader fails) before the shim kills it.
const stopGrace = 3 * time.Second

// guardRestored watches the pages of pod restored from m that still stream in: should
// they become unreadable, the pod is stopped (stopRestored). It returns at once; the
// watch ends with the stream or the sandbox, whatever becomes of ctx (the restore's, whose
// logger it keeps).
func (p *Pod) guardRestored(ctx context.Context, m *manifest.Manifest, f *fetch) {
	if f.img == nil || f.img.Cached {
		return
	}
	ctx = context.WithoutCancel(ctx)
	go func() {
		select {
		case <-f.img.Failed():
		case <-f.img.Done():
			if f.img.Err() == nil {
				return // every page arrived
			}
		case <-p.sandboxGone:
			return
		}
		p.stopRestored(ctx, m, f.img.Err())
	}()
}

// stopRestored ends the restored pod whose snapshot m's pages could not be read (err
// names the object and frame): the decision line and reports say why, and the sandbox is
// killed unless gVisor stopped it within stopGrace.
func (p *Pod) stopRestored(ctx context.Context, m *manifest.Manifest, err error) {
	id := p.sb.ID()
	corrupt := errors.Is(err, storage.ErrCorrupt)
	kept := "the snapshot is kept: its bytes were not found bad, the store did not deliver them; the next restore of it on this node first checks that the store answers"
	if corrupt {
		kept = "the snapshot is marked Failed, later pods start cold"
	}
	why := fmt.Sprintf("the pod restored from snapshot %s/%s could not load the rest of its memory: %v; stopping it (%s)",
		p.namespace, m.UUID, err, kept)
	decide(ctx, id, "restored pod stopped", why)
	if corrupt {
		p.reportSnapshotFailed(ctx, m, err)
	} else {
		p.rememberStall(ctx, m, err)
	}
	p.rep.write(ctx, report.Report{Kind: report.RestoredPodStopped, Snapshot: m.UUID, StoragePath: p.storagePath(m), Message: why})
	select {
	case <-p.sandboxGone:
		return
	case <-time.After(stopGrace):
	}
	log.G(ctx).WithField("id", id).Warnf("podsnapshot: the sandbox restored from snapshot %s/%s still runs %s after its pages failed; killing it", p.namespace, m.UUID, stopGrace)
	if err := p.sb.Kill(ctx, 9); err != nil {
		log.G(ctx).WithError(err).WithField("id", id).Warn("podsnapshot: kill of a restored sandbox whose pages failed")
	}
}

// reportSnapshotFailed reports that a restore found snapshot m corrupt (err) and that it
// was marked Failed in storage.
func (p *Pod) reportSnapshotFailed(ctx context.Context, m *manifest.Manifest, err error) {
	p.rep.write(ctx, report.Report{Kind: report.SnapshotFailed, Snapshot: m.UUID, StoragePath: p.storagePath(m),
		Message: "a restore found it corrupt: " + err.Error()})
}
