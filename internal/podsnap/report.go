package podsnap

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/internal/config"
	"github.com/podsnapshot/podsnapshot/internal/report"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
	"github.com/podsnapshot/podsnapshot/storage"
)

// Reports to the node agent (package report): what happened to a Kubernetes pod matched
// by a policy, one JSON file each in the config's report_dir, which podsnapshot-agent
// turns into PodSnapshot objects, Events and the Pod condition PodRestored.
//
//   - ColdStart, once, when the pod starts without a snapshot: Reason (report.Reason*)
//     and Message (the reason the shim logs with its "cold start" decision). A pod whose
//     workload may checkpoint itself gets, in Snapshot, the UUID reserved for that
//     checkpoint, so that its PodSnapshot can exist (AwaitingCheckpoint) from the start.
//   - Restored, once, when the pod was restored: Snapshot, StoragePath, Seconds (from
//     the lookup at Create to the restored pod), DownloadSeconds (lookup, download and
//     verification; 0 for a cache hit), CacheHit, Message (the "restored" log line).
//   - CheckpointStarted when a checkpoint begins: `runsc checkpoint` is about to run
//     (manual), or the workload's save has ended and the upload begins (workload: the
//     shim learns of a workload's checkpoint only once it is saved).
//   - CheckpointCommitted once its manifest is stored: Snapshot, StoragePath, Seconds
//     (from the checkpoint's start as above to the commit), UploadSeconds, StoredBytes.
//   - CheckpointFailed when it failed or was given up: Snapshot, Message (one line). A
//     reserved UUID no checkpoint used is given up this way when the pod is deleted.
//
// Each checkpoint has its own UUID: the reserved one, else a fresh one; the checkpoint
// after it (a manual policy allows several, and a workload retries after a failed save)
// gets a fresh one. Writing a report never fails or delays the pod beyond the local
// write: an error is logged as a warning. A container without a Kubernetes pod name
// (ctr) gets no reports.

// reporter writes the reports of one pod; a nil *reporter writes none (not a
// Kubernetes pod).
type reporter struct {
	spool   report.Spool
	pod     report.Pod
	sandbox string // the sandbox's containerd ID
	policy  string // the policy's name, in pod.Namespace
	scope   string // the policy's snapshot scope (manifest.Scope*)
}

// newReporter returns the reporter of the pod whose sandbox spec is spec, matched by
// policy in namespace ns, under node config cfg; nil when the spec names no Kubernetes
// pod (annotation io.kubernetes.cri.sandbox-name: a ctr container).
func newReporter(cfg config.Config, spec *specs.Spec, ns, sandboxID, policy, scope string) *reporter {
	name := spec.Annotations[oci.SandboxNameAnnotation]
	if name == "" {
		return nil
	}
	return &reporter{
		spool:   report.Spool{Dir: cfg.Reports(), Max: cfg.ReportMaxFiles},
		pod:     report.Pod{Namespace: ns, Name: name, UID: spec.Annotations[oci.SandboxUIDAnnotation]},
		sandbox: sandboxID,
		policy:  policy,
		scope:   scope,
	}
}

// write stores rep with the pod's identity. A failure is logged, never returned: the
// pod goes on whether or not the agent hears of it.
func (r *reporter) write(ctx context.Context, rep report.Report) {
	if r == nil {
		return
	}
	rep.Pod, rep.SandboxID, rep.Policy, rep.Scope = r.pod, r.sandbox, r.policy, r.scope
	rep.Message = oneLine(rep.Message)
	if err := r.spool.Write(rep); err != nil {
		log.G(ctx).WithError(err).WithFields(log.Fields{"id": r.sandbox, "report": rep.Kind, "snapshot": rep.Snapshot}).
			Warn("podsnapshot: report for the node agent not written")
	}
}

// oneLine joins the lines of s (runsc's output in an error, say) with "; ".
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "\n") {
		return s
	}
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// reserveSnapshot returns the UUID the pod's next checkpoint will be committed under,
// reserving a fresh one when none is.
func (p *Pod) reserveSnapshot() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reserved == "" {
		p.reserved = manifest.NewUUID()
	}
	return p.reserved
}

// takeSnapshot returns the UUID of a checkpoint that begins: the reserved one, or a
// fresh one. The reservation is used up: the next checkpoint gets a fresh UUID.
func (p *Pod) takeSnapshot() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := p.reserved
	p.reserved = ""
	if id == "" {
		id = manifest.NewUUID()
	}
	return id
}

// reportColdStart reports the pod's cold start for reason (report.Reason*); why is the
// reason the decision line logs. Called once the sandbox has been made for the cold
// start: a pod whose workload may now checkpoint itself gets its snapshot's UUID
// reserved and reported.
func (p *Pod) reportColdStart(ctx context.Context, reason, why string) {
	if p.rep == nil {
		return
	}
	snap := ""
	if _, ok := p.checkpointTarget(); ok {
		snap = p.reserveSnapshot()
	}
	p.rep.write(ctx, report.Report{Kind: report.ColdStart, Reason: reason, Message: why, Snapshot: snap})
}

// reportRestored reports the pod's restore from m; total is since the lookup began,
// f is the fetch that brought m onto the node, msg the log line's text.
func (p *Pod) reportRestored(ctx context.Context, m *manifest.Manifest, f *fetch, total time.Duration, msg string) {
	rep := report.Report{Kind: report.Restored, Snapshot: m.UUID, StoragePath: p.storagePath(m),
		Message: msg, Seconds: total.Seconds(), CacheHit: f.cached}
	if !f.cached {
		rep.DownloadSeconds = f.took.Seconds()
	}
	p.rep.write(ctx, rep)
}

// reportCheckpointFailed reports that the checkpoint into snapshot uuid failed or was
// given up, and why.
func (p *Pod) reportCheckpointFailed(ctx context.Context, uuid, why string) {
	p.rep.write(ctx, report.Report{Kind: report.CheckpointFailed, Snapshot: uuid, Message: why})
}

// giveUpReserved reports the snapshot UUID reserved for a checkpoint that never came
// (the pod is being deleted) as failed, so that its PodSnapshot does not await it for
// ever.
func (p *Pod) giveUpReserved(ctx context.Context) {
	p.mu.Lock()
	id := p.reserved
	p.reserved = ""
	p.mu.Unlock()
	if id != "" {
		p.reportCheckpointFailed(ctx, id, "the pod was deleted before its workload triggered a checkpoint")
	}
}

// storagePath is where m's files are: the store's URL joined with the snapshot's
// directory, as PodSnapshot status.storagePath and `podsnapshot checkpoint` show it.
func (p *Pod) storagePath(m *manifest.Manifest) string {
	return strings.TrimSuffix(p.repo.Store.URL(""), "/") + "/" + m.Dir()
}

// fetchReason classifies why a snapshot could not be brought onto the node (repo.Fetch's
// error): corrupt data, or a store that could not be read; a cache or disk without room
// and a cancelled download are Other.
func fetchReason(err error) string {
	switch {
	case err == nil:
		return report.ReasonOther
	case errors.Is(err, storage.ErrCorrupt), errors.Is(err, manifest.ErrMisplaced):
		return report.ReasonCorrupt
	case errors.Is(err, cache.ErrTooLarge), errors.Is(err, cache.ErrNoRoom), errors.Is(err, repo.ErrNoSpace),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return report.ReasonOther
	}
	return report.ReasonStorageUnreachable
}

// findReason classifies why the lookup found no snapshot to restore (the reason in words
// from repo.Find or repo.FindNamed).
func findReason(why string) string {
	switch {
	case strings.HasPrefix(why, "no snapshot for key"), strings.HasPrefix(why, "no snapshot named"),
		strings.Contains(why, "is not a UUID"):
		return report.ReasonNoSnapshot
	case strings.HasPrefix(why, "incompatible snapshot"):
		return report.ReasonIncompatible
	case strings.Contains(why, "was taken from another pod spec"):
		return report.ReasonSpecDiffers
	}
	return report.ReasonOther
}
