package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/internal/kubeapi"
	"github.com/podsnapshot/podsnapshot/internal/report"
)

// reporter turns the spool's reports into API objects, in the order they were written.
// Each report's effects are idempotent (create-if-absent, status set to a value, events
// named after the report), and a report is removed from the spool only after all of them
// succeeded: an agent killed mid-report, or an API server that is down, redoes it later
// and nothing is lost or doubled.
type reporter struct {
	c        client.Client
	reader   client.Reader // the API server itself
	spool    report.Spool
	node     string
	interval time.Duration
	triggers *triggers
	metrics  *metrics
	log      logrus.FieldLogger
	now      func() time.Time

	// refusedSince: when each report was first refused (403, 404), by file name;
	// lastPrune: when set-aside reports were last pruned. Only drain (one goroutine)
	// uses them.
	refusedSince map[string]time.Time
	lastPrune    time.Time
}

// Start polls the spool until ctx ends (a manager.Runnable).
func (r *reporter) Start(ctx context.Context) error {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		r.drain(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// NeedLeaderElection is false: every node's agent handles its own spool.
func (r *reporter) NeedLeaderElection() bool { return false }

// drain handles the spool's reports, in the order they were written within each
// namespace and independently across namespaces: a report that fails holds back only the
// later reports of its own namespace (they may depend on it: a pod's Restored names the
// PodSnapshot another pod's CheckpointCommitted creates), retried at the next tick, while
// other namespaces' reports go on in the same round. Only an API server that cannot be
// reached at all (serverDown) ends the round. A report the API server refuses for good
// is set aside as ".refused-" (refusedForGood), an unreadable one as ".bad-", each with an
// error logged, so that neither blocks the others nor is lost; set-aside files are pruned
// (pruneSetAside).
func (r *reporter) drain(ctx context.Context) {
	entries, bad, err := r.spool.List()
	if err != nil {
		r.log.WithError(err).Warn("read report spool")
		return
	}
	for _, b := range bad {
		r.log.WithError(b).Error("unreadable report moved aside")
		var br *report.BadReport
		if errors.As(b, &br) {
			if err := r.spool.SetAside(br.Name, "bad"); err != nil {
				r.log.WithError(err).Warn("set aside unreadable report")
			}
		}
	}
	r.pruneSetAside()
	r.forgetGone(entries)
	pending := len(entries)
	r.metrics.pending.Set(float64(pending))
	held := map[string]bool{} // namespaces with an undelivered report this round
	for _, e := range entries {
		if ctx.Err() != nil {
			return
		}
		ns := e.Report.Pod.Namespace
		if held[ns] {
			continue
		}
		if err := r.handle(ctx, e); err != nil {
			if serverDown(err) {
				r.log.WithError(err).WithField("report", e.Name).Warn("report not delivered yet (API server unreachable); retrying")
				return
			}
			if !r.refusedForGood(e.Name, err) {
				r.log.WithError(err).WithField("report", e.Name).Warnf("report not delivered yet; retrying (later reports of namespace %q wait)", ns)
				held[ns] = true
				continue
			}
			// The API server will never take it (the namespace is gone or terminating,
			// a quota or webhook refuses it, RBAC forbids it): set it aside, kept for
			// inspection, so that it does not hold up the namespace's later reports.
			r.log.WithError(err).WithField("report", e.Name).Error("report refused by the API server; set aside as .refused-" + e.Name)
			r.metrics.refused.Inc()
			if err := r.spool.SetAside(e.Name, "refused"); err != nil {
				r.log.WithError(err).Warn("set aside refused report")
				held[ns] = true
				continue
			}
			pending--
			r.metrics.pending.Set(float64(pending))
			continue
		}
		delete(r.refusedSince, e.Name)
		if err := r.spool.Remove(e.Name); err != nil {
			r.log.WithError(err).Warn("remove delivered report")
			held[ns] = true
			continue
		}
		r.metrics.observe(e.Report)
		pending--
		r.metrics.pending.Set(float64(pending))
	}
}

// serverDown tells whether err says the API server could not be reached or is
// overloaded (no API status at all: a refused connection, a timeout; or 503, 429, 504):
// then every report would fail alike, and the round ends instead of trying each.
func serverDown(err error) bool {
	var st apierrors.APIStatus
	if !errors.As(err, &st) {
		return !errors.Is(err, context.Canceled) && !errors.Is(err, errMalformed)
	}
	return apierrors.IsServiceUnavailable(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err)
}

// forgetGone drops the refusal times of reports no longer in the spool (removed by a
// shim's report_max_files trim).
func (r *reporter) forgetGone(entries []report.Entry) {
	if len(r.refusedSince) == 0 {
		return
	}
	in := make(map[string]bool, len(entries))
	for _, e := range entries {
		in[e.Name] = true
	}
	for name := range r.refusedSince {
		if !in[name] {
			delete(r.refusedSince, name)
		}
	}
}

// Set-aside reports (.refused-*, .bad-*) are kept for setAsideMaxAge after they were set
// aside, and at most setAsideMaxFiles of them (the newest): long enough for an operator
// alerted by the log or podsnapshot_reports_refused_total to read them after a weekend,
// and bounded so that a namespace deleted with many pods, again and again, cannot fill
// the node's disk (a report is about 1 KiB). Pruned at most every pruneEvery.
const (
	setAsideMaxAge   = 7 * 24 * time.Hour
	setAsideMaxFiles = 1000
	pruneEvery       = time.Minute
)

// pruneSetAside removes set-aside reports past the limits above, at most once every
// pruneEvery.
func (r *reporter) pruneSetAside() {
	now := r.now()
	if !r.lastPrune.IsZero() && now.Sub(r.lastPrune) < pruneEvery {
		return
	}
	r.lastPrune = now
	n, err := r.spool.PruneSetAside(now.Add(-setAsideMaxAge), setAsideMaxFiles)
	if err != nil {
		r.log.WithError(err).Warn("prune set-aside reports")
	}
	if n > 0 {
		r.log.Infof("removed %d set-aside reports (kept: %s, at most %d)", n, setAsideMaxAge, setAsideMaxFiles)
	}
}

// errMalformed marks a report that no retry can deliver (it lacks what its kind needs).
var errMalformed = errors.New("malformed report")

// refuseWindow is how long a report must keep failing with a 403 before it is set
// aside: an API server that has just started may refuse until its authorizer has
// synced, and that must not cost a report.
const refuseWindow = time.Minute

// refusedForGood tells whether report name, which just failed with err, is to be set
// aside: err is a refusal the API server gives again however often it is retried, or
// the report itself is malformed (errMalformed). At once when nothing can change it: the namespace is terminating or gone (a Forbidden
// with cause NamespaceTerminating, a NotFound of the namespace), or the request is
// invalid (422, 400, 405, 413). After refuseWindow for other 403s (an authorizer that
// has not synced yet) and 404s. Other errors (the API server slow, conflicts, a webhook
// that fails) are retried forever, holding only the report's namespace.
func (r *reporter) refusedForGood(name string, err error) bool {
	if errors.Is(err, errMalformed) || apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) || namespaceNotFound(err) ||
		apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) ||
		apierrors.IsMethodNotSupported(err) || apierrors.IsRequestEntityTooLargeError(err) {
		delete(r.refusedSince, name)
		return true
	}
	if !apierrors.IsForbidden(err) && !apierrors.IsNotFound(err) {
		delete(r.refusedSince, name)
		return false
	}
	if r.refusedSince == nil {
		r.refusedSince = map[string]time.Time{}
	}
	first, ok := r.refusedSince[name]
	if !ok {
		r.refusedSince[name] = r.now()
		return false
	}
	if r.now().Sub(first) < refuseWindow {
		return false
	}
	delete(r.refusedSince, name)
	return true
}

// namespaceNotFound tells whether err is a NotFound of a namespace: what the API server
// answers to a create in a namespace that does not exist.
func namespaceNotFound(err error) bool {
	var st apierrors.APIStatus
	if !apierrors.IsNotFound(err) || !errors.As(err, &st) {
		return false
	}
	d := st.Status().Details
	return d != nil && d.Kind == "namespaces" && d.Group == ""
}

// handle carries out one report. Reports about pods without a Kubernetes name (ctr
// containers) have nothing to update.
func (r *reporter) handle(ctx context.Context, e report.Entry) error {
	rep := e.Report
	if rep.Pod.Name == "" {
		return nil
	}
	podID := rep.Pod.Namespace + "/" + rep.Pod.Name
	snapID := rep.Pod.Namespace + "/" + rep.Snapshot
	switch rep.Kind {
	case report.ColdStart:
		if rep.Snapshot != "" {
			if err := r.ensureSnapshot(ctx, rep); err != nil {
				return err
			}
		}
		typ := corev1.EventTypeWarning
		if rep.Reason == report.ReasonNoSnapshot {
			typ = corev1.EventTypeNormal
		}
		return r.event(ctx, e, typ, fmt.Sprintf("Started the pod without a snapshot (%s): %s", rep.Reason, rep.Message))
	case report.Restored:
		// The snapshot was committed, so its object exists unless it was deleted since:
		// a restore does not bring it back (the controller adopts committed snapshots
		// that have none).
		at := metav1.NewTime(rep.Time)
		err := kubeapi.IgnoreNotFound(kubeapi.SetSnapshotStatus(ctx, r.c, rep.Pod.Namespace, rep.Snapshot, func(ps *v1.PodSnapshot) {
			if ps.Status.LastAccessTime == nil || ps.Status.LastAccessTime.Before(&at) {
				ps.Status.LastAccessTime = &at
			}
		}))
		if err != nil {
			return err
		}
		if err := r.podRestored(ctx, rep, "Restored from PodSnapshot "+snapID); err != nil {
			return err
		}
		return r.event(ctx, e, corev1.EventTypeNormal, "Successfully restored the pod from PodSnapshot "+snapID)
	case report.CheckpointStarted:
		return r.ensureSnapshot(ctx, rep)
	case report.CheckpointCommitted:
		if err := r.ensureSnapshot(ctx, rep); err != nil {
			return err
		}
		err := kubeapi.SetSnapshotStatus(ctx, r.c, rep.Pod.Namespace, rep.Snapshot, func(ps *v1.PodSnapshot) {
			if rep.StoragePath != "" && ownedBy(ps, r.node) {
				ps.Status.StoragePath = rep.StoragePath
			}
			kubeapi.Committed(ps, rep.Time)
		})
		if err != nil {
			return err
		}
		if err := r.event(ctx, e, corev1.EventTypeNormal, "Successfully checkpointed the pod to PodSnapshot "+snapID); err != nil {
			return err
		}
		return r.triggers.completed(ctx, rep)
	case report.CheckpointFailed:
		if err := r.ensureSnapshot(ctx, rep); err != nil {
			return err
		}
		err := kubeapi.SetSnapshotStatus(ctx, r.c, rep.Pod.Namespace, rep.Snapshot, func(ps *v1.PodSnapshot) {
			kubeapi.Failed(ps, rep.Message, rep.Time)
		})
		if err != nil {
			return err
		}
		if err := r.event(ctx, e, corev1.EventTypeWarning, fmt.Sprintf("Failed to checkpoint the pod to PodSnapshot %s: %s", snapID, rep.Message)); err != nil {
			return err
		}
		return r.triggers.failed(ctx, rep)
	case report.SnapshotFailed:
		err := kubeapi.IgnoreNotFound(kubeapi.SetSnapshotStatus(ctx, r.c, rep.Pod.Namespace, rep.Snapshot, func(ps *v1.PodSnapshot) {
			kubeapi.Unusable(ps, rep.Message, rep.Time)
		}))
		if err != nil {
			return err
		}
		return r.event(ctx, e, corev1.EventTypeWarning, fmt.Sprintf("PodSnapshot %s is unusable and marked Failed; later pods start cold: %s", snapID, rep.Message))
	case report.RestoredPodStopped:
		return r.event(ctx, e, corev1.EventTypeWarning, fmt.Sprintf("Stopped the pod restored from PodSnapshot %s: %s", snapID, rep.Message))
	case report.SnapshotDeleted:
		return r.snapshotDeleted(ctx, rep)
	}
	r.log.WithField("report", e.Name).Warnf("report of unknown kind %q about pod %s ignored", rep.Kind, podID)
	return nil
}

// ensureSnapshot creates PodSnapshot <pod namespace>/<rep.Snapshot> when it does not
// exist: Ready False/AwaitingCheckpoint, with the finalizer that deletes its files, the
// source pod and this node. A snapshot being deleted is left alone.
func (r *reporter) ensureSnapshot(ctx context.Context, rep report.Report) error {
	if rep.Snapshot == "" {
		return fmt.Errorf("%s report about pod %s/%s names no snapshot: %w", rep.Kind, rep.Pod.Namespace, rep.Pod.Name, errMalformed)
	}
	ps := &v1.PodSnapshot{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:  rep.Pod.Namespace,
			Name:       rep.Snapshot,
			Labels:     map[string]string{v1.LabelNode: r.node},
			Finalizers: []string{kubeapi.Finalizer},
		},
		Spec: v1.PodSnapshotSpec{PolicyName: rep.Policy},
	}
	err := r.c.Create(ctx, ps)
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create PodSnapshot %s/%s: %w", rep.Pod.Namespace, rep.Snapshot, err)
	}
	return kubeapi.IgnoreNotFound(kubeapi.SetSnapshotStatus(ctx, r.c, rep.Pod.Namespace, rep.Snapshot, func(ps *v1.PodSnapshot) {
		if !ownedBy(ps, r.node) {
			// Another node's or the controller's (adopted from storage, its status from the
			// manifest): where its files are and who took it are not this node's to say,
			// and the agents' admission policy refuses it.
			kubeapi.Awaiting(ps, rep.Time)
			return
		}
		if ps.Status.SourcePod == "" {
			ps.Status.SourcePod = rep.Pod.Namespace + "/" + rep.Pod.Name
		}
		if ps.Status.NodeName == "" {
			ps.Status.NodeName = r.node
		}
		if ps.Status.StoragePath == "" && rep.StoragePath != "" {
			ps.Status.StoragePath = rep.StoragePath
		}
		if ps.Status.SnapshotScope == "" && rep.Scope != "" {
			ps.Status.SnapshotScope = v1.SnapshotScope(rep.Scope)
		}
		kubeapi.Awaiting(ps, rep.Time)
	}))
}

// ownedBy tells whether ps is node's: created by node's agent (label v1.LabelNode) or, for
// objects from before the label, with status.nodeName node.
func ownedBy(ps *v1.PodSnapshot, node string) bool {
	if l, ok := ps.Labels[v1.LabelNode]; ok {
		return l == node
	}
	return ps.Status.NodeName == node
}

// snapshotDeleted follows a deletion of the snapshot's files by the shim's retention. The
// node's own PodSnapshot is deleted (its finalizer finds no manifest and lets it go);
// another node's is only marked Failed (the agents' admission policy lets an agent delete
// only its own node's objects: a deletion makes the controller delete files, so one node
// must not ask it for another's), and the controller deletes it after its Failed TTL.
func (r *reporter) snapshotDeleted(ctx context.Context, rep report.Report) error {
	snapID := rep.Pod.Namespace + "/" + rep.Snapshot
	var ps v1.PodSnapshot
	if err := r.c.Get(ctx, client.ObjectKey{Namespace: rep.Pod.Namespace, Name: rep.Snapshot}, &ps); err != nil {
		return kubeapi.IgnoreNotFound(err)
	}
	if !ownedBy(&ps, r.node) {
		msg := "files deleted from storage by the retention of node " + r.node + ": " + rep.Message
		return kubeapi.IgnoreNotFound(kubeapi.SetSnapshotStatus(ctx, r.c, rep.Pod.Namespace, rep.Snapshot, func(ps *v1.PodSnapshot) {
			kubeapi.Unusable(ps, msg, rep.Time)
		}))
	}
	if err := kubeapi.IgnoreNotFound(r.c.Delete(ctx, &ps, client.Preconditions{UID: &ps.UID})); err != nil {
		return fmt.Errorf("delete PodSnapshot %s (%s): %w", snapID, rep.Message, err)
	}
	r.log.Infof("PodSnapshot %s deleted: %s", snapID, rep.Message)
	return nil
}

// event records a core/v1 Event on the report's pod, reason GKEPodSnapshotting, named
// after the report so that a retried report does not record it twice.
func (r *reporter) event(ctx context.Context, e report.Entry, typ, msg string) error {
	rep := e.Report
	pod := corev1.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: rep.Pod.Namespace, Name: rep.Pod.Name, UID: types.UID(rep.Pod.UID)}
	ev := nodeEvent(r.node, pod, strings.TrimSuffix(e.Name, ".json"), v1.EventReason, typ, msg, rep.Time)
	if err := r.c.Create(ctx, ev); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("record event on pod %s/%s: %w", rep.Pod.Namespace, rep.Pod.Name, err)
	}
	return nil
}

// podRestored sets the Pod condition PodRestored True on the restored pod, if it still
// exists with the UID the report names (a pod deleted since, or replaced by one of the
// same name, is left alone).
func (r *reporter) podRestored(ctx context.Context, rep report.Report, msg string) error {
	// From the API server, not the cache: a cache relisting after an outage would make a
	// pod that exists look deleted and the condition be dropped.
	var pod corev1.Pod
	if err := r.reader.Get(ctx, client.ObjectKey{Namespace: rep.Pod.Namespace, Name: rep.Pod.Name}, &pod); err != nil {
		return kubeapi.IgnoreNotFound(err)
	}
	if rep.Pod.UID != "" && string(pod.UID) != rep.Pod.UID {
		return nil
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == kubeapi.PodRestored && c.Status == corev1.ConditionTrue && c.Message == msg {
			return nil
		}
	}
	cond := corev1.PodCondition{Type: kubeapi.PodRestored, Status: corev1.ConditionTrue, Reason: "Restored",
		Message: msg, LastTransitionTime: metav1.NewTime(rep.Time)}
	patch := fmt.Sprintf(`{"status":{"conditions":[%s]}}`, mustJSON(cond))
	if err := r.c.Status().Patch(ctx, &pod, client.RawPatch(types.StrategicMergePatchType, []byte(patch))); err != nil {
		return kubeapi.IgnoreNotFound(err)
	}
	return nil
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only our own plain structs are encoded
	}
	return string(b)
}
