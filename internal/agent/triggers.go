package agent

import (
	"context"
	"fmt"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/namespaces"
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
// Checkpoint call the shim serves: it answers once the snapshot is committed). The
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
	m := policy.Load(t.policyDir).Match(pod.Namespace, pod.Labels)
	switch {
	case !m.Found():
		return reconcile.Result{}, t.setTriggered(ctx, &tr, metav1.ConditionFalse, v1.ReasonFailed, "no PodSnapshotPolicy matches "+id, "")
	case m.Policy.Spec.TriggerConfig.Type != v1.TriggerManual:
		return reconcile.Result{}, t.setTriggered(ctx, &tr, metav1.ConditionFalse, v1.ReasonFailed,
			fmt.Sprintf("PodSnapshotPolicy %s that matches %s has triggerConfig.type %s, not manual", m.ID(), id, m.Policy.Spec.TriggerConfig.Type), "")
	}
	sandbox, err := t.sandboxOf(ctx, &pod)
	if err != nil {
		return reconcile.Result{}, t.setTriggered(ctx, &tr, metav1.ConditionFalse, v1.ReasonFailed, err.Error(), "")
	}
	if err := t.setTriggered(ctx, &tr, metav1.ConditionUnknown, ReasonCheckpointing, "checkpointing "+id, ""); err != nil {
		return reconcile.Result{}, err
	}
	t.log.WithFields(logrus.Fields{"trigger": req.String(), "sandbox": sandbox}).Info("manual trigger: checkpointing " + id)
	cctx := namespaces.WithNamespace(ctx, criNS)
	if _, err := tasks.NewTasksClient(t.conn).Checkpoint(cctx, &tasks.CheckpointTaskRequest{ContainerID: sandbox}); err != nil {
		// A failure before the shim began reports nothing: fail the trigger here. One
		// after it began is also reported (CheckpointFailed); whichever comes first wins.
		return reconcile.Result{}, t.setTriggered(ctx, &tr, metav1.ConditionFalse, v1.ReasonFailed,
			fmt.Sprintf("checkpoint of %s: %v", id, errgrpc.ToNative(err)), "")
	}
	return reconcile.Result{}, nil
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
		if tr.Spec.TargetPod == rep.Pod.Name && c != nil && c.Status == metav1.ConditionUnknown {
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
