// Package controller is the cluster side of podsnapshot under Kubernetes: one active
// replica (podsnapshot-agent --role=controller, leader election on a Lease) that owns
// cluster-wide state:
//
//   - deletion: a PodSnapshot stored in Cloud Storage goes only after its files are
//     deleted (finalizer podsnapshot.gke.io/podsnapshot-finalizer; local-store snapshots
//     are deleted by the agent of their node);
//   - PodSnapshotManualTriggers whose target pod does not exist fail with a message;
//   - retention and the reconcile between storage and objects (sync.go).
package controller

import (
	"context"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/internal/kubeapi"
)

// Options configure the controller.
type Options struct {
	// SyncInterval is how often retention and the storage reconcile run; 0 means 1 minute.
	SyncInterval time.Duration
	// LocalStores says this process sees the nodes' local store directories (a single
	// node, or a shared filesystem): the sync then covers file:// stores too.
	LocalStores bool
	// FailedTTL is how long a Failed PodSnapshot is kept before it is deleted; 0 means 24 h.
	FailedTTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger; nil means logrus.StandardLogger().
	Logger logrus.FieldLogger
}

// Setup adds the controller's reconcilers and its periodic sync to mgr (all of them run
// only while this replica leads).
func Setup(mgr ctrl.Manager, opts Options) error {
	if opts.SyncInterval == 0 {
		opts.SyncInterval = time.Minute
	}
	if opts.FailedTTL == 0 {
		opts.FailedTTL = 24 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = logrus.StandardLogger()
	}
	c := mgr.GetClient()
	if err := ctrl.NewControllerManagedBy(mgr).Named("podsnapshot-deletion").For(&v1.PodSnapshot{}).
		// Node deletions only, metadata only: a node's heartbeats must not list PodSnapshots.
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(localSnapshotsOf(c)),
			builder.OnlyMetadata, builder.WithPredicates(predicate.Funcs{
				CreateFunc:  func(event.CreateEvent) bool { return false },
				UpdateFunc:  func(event.UpdateEvent) bool { return false },
				GenericFunc: func(event.GenericEvent) bool { return false },
			})).
		Complete(&deletion{c: c, reader: mgr.GetAPIReader(), localStores: opts.LocalStores, log: opts.Logger}); err != nil {
		return err
	}
	if err := ctrl.NewControllerManagedBy(mgr).Named("trigger-target").For(&v1.PodSnapshotManualTrigger{}).
		Complete(&missingTarget{c: c, reader: mgr.GetAPIReader(), now: opts.Now}); err != nil {
		return err
	}
	return mgr.Add(&syncer{c: c, opts: opts, log: opts.Logger})
}

// deletion keeps the finalizer on every PodSnapshot and, when one stored in Cloud
// Storage is deleted, deletes its files before letting it go. A local store's snapshot
// being deleted whose node is gone from the cluster is let go too: its files went with
// the node, and no agent is left to delete them.
type deletion struct {
	c           client.Client
	reader      client.Reader // the API server: a node the cache missed must not look gone
	localStores bool          // see Options.LocalStores
	log         logrus.FieldLogger
}

func (d *deletion) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var ps v1.PodSnapshot
	if err := d.c.Get(ctx, req.NamespacedName, &ps); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if ps.DeletionTimestamp == nil {
		if kubeapi.HasFinalizer(&ps) {
			return reconcile.Result{}, nil
		}
		base := ps.DeepCopy()
		ps.Finalizers = append(ps.Finalizers, kubeapi.Finalizer)
		return reconcile.Result{}, kubeapi.IgnoreNotFound(d.c.Patch(ctx, &ps, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})))
	}
	if !kubeapi.HasFinalizer(&ps) {
		return reconcile.Result{}, nil
	}
	// A local store's files are deleted by the agent of status.nodeName; one adopted from
	// a store without a known node only by a controller that sees that store.
	if kubeapi.IsLocal(&ps) && ps.Status.NodeName != "" {
		return d.nodeGone(ctx, &ps)
	}
	if kubeapi.IsLocal(&ps) && !d.localStores {
		return reconcile.Result{}, nil
	}
	return kubeapi.Release(ctx, d.c, &ps, d.log)
}

// nodeGone lets a local store's snapshot go when its node no longer exists (the Node
// object was deleted: the node and its disk are gone, as when a node pool shrinks). While
// the node exists its agent deletes the files; a Node deletion requeues the node's
// snapshots (localSnapshotsOf).
func (d *deletion) nodeGone(ctx context.Context, ps *v1.PodSnapshot) (reconcile.Result, error) {
	if exists, err := nodeExists(ctx, d.reader, ps.Status.NodeName); exists || err != nil {
		return reconcile.Result{}, err
	}
	d.log.Infof("PodSnapshot %s/%s: node %s is gone, and its local store %s with it; letting the object go",
		ps.Namespace, ps.Name, ps.Status.NodeName, ps.Status.StoragePath)
	return reconcile.Result{}, kubeapi.RemoveFinalizer(ctx, d.c, ps)
}

// localSnapshotsOf maps a Node event to the local-store PodSnapshots of that node that are
// being deleted.
func localSnapshotsOf(c client.Client) handler.MapFunc {
	return func(ctx context.Context, obj client.Object) []reconcile.Request {
		var list v1.PodSnapshotList
		if err := c.List(ctx, &list); err != nil {
			return nil
		}
		var out []reconcile.Request
		for _, ps := range list.Items {
			if ps.DeletionTimestamp != nil && kubeapi.IsLocal(&ps) && ps.Status.NodeName == obj.GetName() {
				out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&ps)})
			}
		}
		return out
	}
}

// missingTarget fails the triggers whose target pod does not exist (the node agents see
// only their own nodes' pods). A trigger younger than 5 s is looked at again later, so
// that a pod created with it has time to appear.
type missingTarget struct {
	c      client.Client
	reader client.Reader // the API server, not the cache: a pod just created must count
	now    func() time.Time
}

const targetGrace = 5 * time.Second

func (m *missingTarget) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var tr v1.PodSnapshotManualTrigger
	if err := m.c.Get(ctx, req.NamespacedName, &tr); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if c := meta.FindStatusCondition(tr.Status.Conditions, v1.ConditionTriggered); c != nil {
		if c.Status != metav1.ConditionUnknown || tr.Status.NodeName == "" {
			return reconcile.Result{}, nil
		}
		return m.nodeGone(ctx, &tr)
	}
	var pod corev1.Pod
	err := m.reader.Get(ctx, client.ObjectKey{Namespace: tr.Namespace, Name: tr.Spec.TargetPod}, &pod)
	switch {
	case err == nil && pod.Spec.NodeName != "":
		return reconcile.Result{}, nil // its node's agent carries it out
	case err == nil:
		return reconcile.Result{RequeueAfter: time.Second}, nil // not scheduled yet
	case !apierrors.IsNotFound(err):
		return reconcile.Result{}, err
	}
	if age := m.now().Sub(tr.CreationTimestamp.Time); age < targetGrace {
		return reconcile.Result{RequeueAfter: targetGrace - age}, nil
	}
	msg := fmt.Sprintf("pod %s/%s not found", tr.Namespace, tr.Spec.TargetPod)
	return reconcile.Result{}, kubeapi.SetTriggered(ctx, m.c, req.NamespacedName, "", metav1.ConditionFalse, v1.ReasonFailed, msg, "")
}

// nodeCheck is how often the node of a checkpointing trigger is looked for.
const nodeCheck = time.Minute

// nodeGone fails a trigger whose checkpoint runs on a node that no longer exists: only
// that node's agent may write its status (agent-node-policy.yaml), and no report will
// come. While the node exists its agent ends the trigger (report or outcome deadline).
func (m *missingTarget) nodeGone(ctx context.Context, tr *v1.PodSnapshotManualTrigger) (reconcile.Result, error) {
	exists, err := nodeExists(ctx, m.reader, tr.Status.NodeName)
	if err != nil {
		return reconcile.Result{}, err
	}
	if exists {
		return reconcile.Result{RequeueAfter: nodeCheck}, nil
	}
	msg := fmt.Sprintf("node %s, which was checkpointing pod %s/%s, is gone", tr.Status.NodeName, tr.Namespace, tr.Spec.TargetPod)
	return reconcile.Result{}, kubeapi.SetTriggered(ctx, m.c, client.ObjectKeyFromObject(tr), "", metav1.ConditionFalse, v1.ReasonFailed, msg, "")
}

// nodeExists tells whether Node name exists, read from the API server (a node the cache
// has not seen must not look gone).
func nodeExists(ctx context.Context, reader client.Reader, name string) (bool, error) {
	err := reader.Get(ctx, client.ObjectKey{Name: name}, &corev1.Node{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}
