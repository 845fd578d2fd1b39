package agent

import (
	"context"

	"github.com/sirupsen/logrus"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/internal/kubeapi"
)

// localDeletion deletes the files of PodSnapshots stored in a local store of this node
// (status.storagePath file://..., status.nodeName this node) when the object is deleted,
// then lets the object go by removing the finalizer. Cloud Storage snapshots are the
// controller's. A deletion that fails is retried with backoff; the object stays until
// its files are gone.
type localDeletion struct {
	c    client.Client
	node string
	log  logrus.FieldLogger
}

func (d *localDeletion) setup(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).Named("local-snapshot-deletion").
		For(&v1.PodSnapshot{}).
		Complete(d)
}

// Reconcile deletes one snapshot's local files once it is being deleted.
func (d *localDeletion) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var ps v1.PodSnapshot
	if err := d.c.Get(ctx, req.NamespacedName, &ps); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if ps.DeletionTimestamp == nil || !kubeapi.HasFinalizer(&ps) || !kubeapi.IsLocal(&ps) || ps.Status.NodeName != d.node {
		return reconcile.Result{}, nil
	}
	return kubeapi.Release(ctx, d.c, &ps, d.log)
}
