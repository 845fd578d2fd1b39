package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/policy"
	"github.com/podsnapshot/podsnapshot/internal/kubeapi"
	"github.com/podsnapshot/podsnapshot/internal/report"
)

// ReasonCheckpointing is the Triggered condition's reason (status Unknown) while the
// agent's checkpoint of the target pod runs; the committed or failed report ends it.
const ReasonCheckpointing = "Checkpointing"

// outcomeDeadline bounds how long a trigger stays Triggered Unknown (checkpointing)
// without a report of its outcome; podWait how long a node looks for a trigger's pod
// that its cache does not hold yet.
const (
	outcomeDeadline = 30 * time.Minute
	podWait         = time.Minute
)

// CRI's labels on the containerd containers it creates.
const (
	labelPodUID = "io.kubernetes.pod.uid"
	labelKind   = "io.cri-containerd.kind"
	kindSandbox = "sandbox"
	criNS       = "k8s.io"
)

// triggers carries out the PodSnapshotManualTriggers whose target pod runs on this node:
// it checks that a manual policy matches the pod, marks the trigger Triggered
// Unknown/Checkpointing, and asks containerd to checkpoint the pod's sandbox (the task
// Checkpoint call the shim serves: it answers once the snapshot is committed), in a
// goroutine bounded by outcomeDeadline and by the node's checkpoint slots, so that a
// reconcile worker never waits for a checkpoint. The
// CheckpointCommitted report then completes the trigger (True/Complete, snapshotCreated)
// and a CheckpointFailed report fails it, so the outcome survives an agent restart.
// Triggers naming a pod that does not exist are the controller's.
type triggers struct {
	c         client.Client
	node      string
	policyDir string
	conn      *grpc.ClientConn // containerd
	log       logrus.FieldLogger
	now       func() time.Time
	slots     slots // the checkpoints in flight
}

func (t *triggers) setup(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).Named("manual-trigger").
		For(&v1.PodSnapshotManualTrigger{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: 4}).
		Complete(t)
}

// Reconcile handles one trigger once.
func (t *triggers) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var tr v1.PodSnapshotManualTrigger
	if err := t.c.Get(ctx, req.NamespacedName, &tr); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if c := meta.FindStatusCondition(tr.Status.Conditions, v1.ConditionTriggered); c != nil {
		if c.Status != metav1.ConditionUnknown {
			return reconcile.Result{}, nil
		}
		if tr.Status.NodeName != "" && tr.Status.NodeName != t.node {
			// Another node's: only its agent may write it (agent-node-policy.yaml); a
			// node that is gone is the controller's to fail.
			return reconcile.Result{}, nil
		}
		// In progress on some node. Its report ends it; if none comes (the agent died
		// before its checkpoint call, the shim or the node died), give up after a while.
		if left := outcomeDeadline - t.now().Sub(c.LastTransitionTime.Time); left > 0 {
			return reconcile.Result{RequeueAfter: left}, nil
		}
		return reconcile.Result{}, t.setTriggered(ctx, &tr, metav1.ConditionFalse, v1.ReasonFailed,
			fmt.Sprintf("no outcome reported within %s of the checkpoint's start", outcomeDeadline), "")
	}
	var pod corev1.Pod
	if err := t.c.Get(ctx, client.ObjectKey{Namespace: tr.Namespace, Name: tr.Spec.TargetPod}, &pod); err != nil {
		if !apierrors.IsNotFound(err) {
			return reconcile.Result{}, err
		}
		// The cache holds this node's pods only: another node's, a missing pod, or one
		// created with the trigger that the cache has not seen yet; look again a while.
		if t.now().Sub(tr.CreationTimestamp.Time) < podWait {
			return reconcile.Result{RequeueAfter: time.Second}, nil
		}
		return reconcile.Result{}, nil
	}
	if pod.Spec.NodeName != t.node {
		return reconcile.Result{}, nil
	}
	id := fmt.Sprintf("pod %s/%s", pod.Namespace, pod.Name)
	if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return reconcile.Result{}, t.setTriggered(ctx, &tr, metav1.ConditionFalse, v1.ReasonFailed, id+" is not running (phase "+string(pod.Status.Phase)+")", "")
	}
	if pod.Status.Phase != corev1.PodRunning {
		return reconcile.Result{RequeueAfter: time.Second}, nil
	}
	if t.slots.full(tr.Namespace) {
		// Looked at again every slotWait while the slots are taken: spare the policy
		// directory and containerd the reads below until one is free.
		return reconcile.Result{RequeueAfter: slotWait}, nil
	}
	m := policy.Load(t.policyDir).Match(pod.Namespace, pod.Labels)
	switch {
	case !m.Found():
		return reconcile.Result{}, t.setTriggered(ctx, &tr, metav1.ConditionFalse, v1.ReasonFailed, "no PodSnapshotPolicy matches "+id, "")
	case m.Policy.Spec.TriggerConfig.Type != v1.TriggerManual:
		return reconcile.Result{}, t.setTriggered(ctx, &tr, metav1.ConditionFalse, v1.ReasonFailed,
			fmt.Sprintf("PodSnapshotPolicy %s that matches %s has triggerConfig.type %s, not manual", m.ID(), id, m.Policy.Spec.TriggerConfig.Type), "")
	}
	sandbox, err := t.sandboxOf(ctx, &pod)
	if errdefs.IsUnavailable(err) {
		// containerd restarting, or this agent's socket mount stale until the liveness
		// check has it restarted: look again.
		t.log.WithError(err).WithField("trigger", req.String()).Warn("manual trigger: containerd unavailable; waiting")
		return reconcile.Result{RequeueAfter: slotWait}, nil
	}
	if err != nil {
		return reconcile.Result{}, t.setTriggered(ctx, &tr, metav1.ConditionFalse, v1.ReasonFailed, err.Error(), "")
	}
	if !t.slots.take(tr.Namespace) {
		// The node runs as many checkpoints as it may, or this namespace its share: look
		// again soon, not yet Checkpointing (its outcome deadline has not begun).
		t.log.WithField("trigger", req.String()).Debugf("manual trigger: %d checkpoints running on the node (%d per namespace at most); waiting", maxCheckpoints, maxCheckpointsPerNamespace)
		return reconcile.Result{RequeueAfter: slotWait}, nil
	}
	if err := t.setTriggered(ctx, &tr, metav1.ConditionUnknown, ReasonCheckpointing, "checkpointing "+id, ""); err != nil {
		t.slots.put(tr.Namespace)
		return reconcile.Result{}, err
	}
	t.log.WithFields(logrus.Fields{"trigger": req.String(), "sandbox": sandbox}).Info("manual trigger: checkpointing " + id)
	go t.checkpoint(context.WithoutCancel(ctx), req.NamespacedName, id, sandbox)
	return reconcile.Result{}, nil
}

// checkpoint asks containerd to checkpoint sandbox (the task Checkpoint call, which the
// shim answers once the snapshot is committed), holding one of the node's checkpoint
// slots of the trigger's namespace until it returns or outcomeDeadline passes. It runs
// in its own goroutine, so that no reconcile worker waits for a checkpoint: the outcome
// comes through the reports. ctx carries no cancellation: an agent that stops leaves the
// checkpoint to the shim and its report.
func (t *triggers) checkpoint(ctx context.Context, key client.ObjectKey, id, sandbox string) {
	defer t.slots.put(key.Namespace)
	cctx, cancel := context.WithTimeout(namespaces.WithNamespace(ctx, criNS), outcomeDeadline)
	defer cancel()
	_, err := tasks.NewTasksClient(t.conn).Checkpoint(cctx, &tasks.CheckpointTaskRequest{ContainerID: sandbox})
	if err == nil {
		return
	}
	if errdefs.IsUnavailable(errgrpc.ToNative(err)) && cctx.Err() == nil {
		// containerd went away during the call (a restart): the shim outlives it and goes
		// on, and its report ends the trigger (or the outcome deadline does).
		t.log.WithError(err).WithField("trigger", key.String()).Warn("manual trigger: containerd went away during the checkpoint of " + id + "; its report will tell")
		return
	}
	// A failure before the shim began reports nothing: fail the trigger here. One after
	// it began is also reported (CheckpointFailed); whichever comes first wins.
	msg := fmt.Sprintf("checkpoint of %s: %v", id, errgrpc.ToNative(err))
	if errors.Is(cctx.Err(), context.DeadlineExceeded) {
		msg = fmt.Sprintf("checkpoint of %s: no answer from containerd within %s", id, outcomeDeadline)
	}
	uctx, ucancel := context.WithTimeout(ctx, time.Minute)
	defer ucancel()
	if err := kubeapi.SetTriggered(uctx, t.c, key, t.node, metav1.ConditionFalse, v1.ReasonFailed, msg, ""); err != nil {
		t.log.WithError(err).WithField("trigger", key.String()).Warn("manual trigger: record the failed checkpoint (" + msg + ")")
	}
}

// Bounds on the manual checkpoints a node runs at once (each a runsc checkpoint writing
// the pod's memory to disk, then its upload): maxCheckpoints in all, and at most
// maxCheckpointsPerNamespace of one namespace, so that one tenant's large pods cannot
// hold every slot while others' triggers wait. A trigger that finds no slot is looked at
// again after slotWait.
const (
	maxCheckpoints             = 4
	maxCheckpointsPerNamespace = 2
	slotWait                   = 2 * time.Second
)

// slots counts the manual checkpoints in flight on the node. The zero value is ready.
type slots struct {
	mu    sync.Mutex
	total int            // guarded by mu: checkpoints in flight
	byNS  map[string]int // guarded by mu: checkpoints in flight per namespace
}

// full reports whether the node or namespace ns has no slot free now.
func (s *slots) full(ns string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fullLocked(ns)
}

// fullLocked is full with s.mu held.
func (s *slots) fullLocked(ns string) bool {
	return s.total >= maxCheckpoints || s.byNS[ns] >= maxCheckpointsPerNamespace
}

// take reserves a slot for namespace ns, or reports false when the node or ns has none.
func (s *slots) take(ns string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fullLocked(ns) {
		return false
	}
	if s.byNS == nil {
		s.byNS = map[string]int{}
	}
	s.total++
	s.byNS[ns]++
	return true
}

// put frees a slot take reserved for ns.
func (s *slots) put(ns string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	if s.byNS[ns]--; s.byNS[ns] <= 0 {
		delete(s.byNS, ns)
	}
}

// sandboxOf finds the containerd ID of pod's sandbox container by CRI's labels.
func (t *triggers) sandboxOf(ctx context.Context, pod *corev1.Pod) (string, error) {
	cctx := namespaces.WithNamespace(ctx, criNS)
	resp, err := containersapi.NewContainersClient(t.conn).List(cctx, &containersapi.ListContainersRequest{
		Filters: []string{fmt.Sprintf(`labels."%s"==%s,labels."%s"==%s`, labelPodUID, pod.UID, labelKind, kindSandbox)},
	})
	if err != nil {
		return "", fmt.Errorf("find the sandbox of pod %s/%s in containerd: %w", pod.Namespace, pod.Name, errgrpc.ToNative(err))
	}
	// A pod whose sandbox was replaced has the old one too until the kubelet removes
	// it: take the one whose task runs.
	for _, c := range resp.Containers {
		tr, err := tasks.NewTasksClient(t.conn).Get(cctx, &tasks.GetRequest{ContainerID: c.ID})
		if err == nil && tr.Process != nil && tr.Process.Status == tasktypes.Status_RUNNING {
			return c.ID, nil
		}
	}
	return "", fmt.Errorf("pod %s/%s has no running sandbox in containerd", pod.Namespace, pod.Name)
}

// setTriggered sets tr's Triggered condition unless an outcome is recorded
// (kubeapi.SetTriggered).
func (t *triggers) setTriggered(ctx context.Context, tr *v1.PodSnapshotManualTrigger, status metav1.ConditionStatus, reason, msg, snapshot string) error {
	return kubeapi.SetTriggered(ctx, t.c, client.ObjectKeyFromObject(tr), t.node, status, reason, msg, snapshot)
}

// inProgress lists the triggers of rep's pod that this node is checkpointing.
func (t *triggers) inProgress(ctx context.Context, rep report.Report) ([]v1.PodSnapshotManualTrigger, error) {
	var list v1.PodSnapshotManualTriggerList
	if err := t.c.List(ctx, &list, client.InNamespace(rep.Pod.Namespace)); err != nil {
		return nil, err
	}
	var out []v1.PodSnapshotManualTrigger
	for _, tr := range list.Items {
		c := meta.FindStatusCondition(tr.Status.Conditions, v1.ConditionTriggered)
		if tr.Spec.TargetPod == rep.Pod.Name && c != nil && c.Status == metav1.ConditionUnknown &&
			(tr.Status.NodeName == "" || tr.Status.NodeName == t.node) {
			out = append(out, tr)
		}
	}
	return out, nil
}

// completed ends the pod's in-progress triggers: True/Complete with snapshotCreated.
func (t *triggers) completed(ctx context.Context, rep report.Report) error {
	trs, err := t.inProgress(ctx, rep)
	if err != nil {
		return err
	}
	for i := range trs {
		msg := fmt.Sprintf("PodSnapshot %s/%s committed", rep.Pod.Namespace, rep.Snapshot)
		if err := t.setTriggered(ctx, &trs[i], metav1.ConditionTrue, v1.ReasonComplete, msg, rep.Snapshot); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return nil
}

// failed ends the pod's in-progress triggers: False/Failed with the report's message.
func (t *triggers) failed(ctx context.Context, rep report.Report) error {
	trs, err := t.inProgress(ctx, rep)
	if err != nil {
		return err
	}
	for i := range trs {
		if err := t.setTriggered(ctx, &trs[i], metav1.ConditionFalse, v1.ReasonFailed, "checkpoint failed: "+rep.Message, ""); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return nil
}
