package kubeapi

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
)

// Release deletes ps's files (DeleteFiles) and then its finalizer, so the object goes.
// Used by the agent for local stores and by the controller for Cloud Storage. A failed
// deletion is logged and retried after 10 s; the object stays until its files are gone.
//
// status.storagePath is status that whoever may write podsnapshots/status could set
// (every agent): the files are deleted only when the path is this snapshot's
// (CheckStoragePath). Otherwise the object goes and the path's files stay, with an error
// logged that names both.
func Release(ctx context.Context, c client.Client, ps *v1.PodSnapshot, log logrus.FieldLogger) (reconcile.Result, error) {
	id := ps.Namespace + "/" + ps.Name
	if ps.Status.StoragePath != "" {
		if err := CheckStoragePath(ctx, c, ps); err != nil {
			log.WithError(err).Errorf("PodSnapshot %s: its files are not deleted", id)
			return reconcile.Result{}, RemoveFinalizer(ctx, c, ps)
		}
		gone, err := DeleteFiles(ctx, ps.Status.StoragePath)
		if err != nil {
			log.WithError(err).Warnf("PodSnapshot %s: files not deleted yet", id)
			return reconcile.Result{RequeueAfter: 10 * time.Second}, nil
		}
		if gone {
			log.Infof("PodSnapshot %s: no manifest at %s (already deleted)", id, ps.Status.StoragePath)
		} else {
			log.Infof("PodSnapshot %s: deleted %s", id, ps.Status.StoragePath)
		}
	}
	return reconcile.Result{}, RemoveFinalizer(ctx, c, ps)
}

// CheckStoragePath tells whether ps's status.storagePath names this snapshot's files:
// "<store>/<ps's namespace>/<spec.policyName>/<ps's name>", where <store> is the store of
// the storage config that spec.policyName names, or, when that policy is gone (a
// namespace being deleted takes its policies and snapshots together), the store of some
// PodSnapshotStorageConfig that may serve the namespace. So an agent that wrote another
// path into the status cannot have the controller delete files of another store, policy
// or snapshot. The error names the path and what it should have been.
func CheckStoragePath(ctx context.Context, c client.Client, ps *v1.PodSnapshot) error {
	store, ns, pol, uuid, err := SplitStoragePath(ps.Status.StoragePath)
	if err != nil {
		return err
	}
	if ns != ps.Namespace || pol != ps.Spec.PolicyName || uuid != ps.Name {
		return fmt.Errorf("storagePath %q is not this snapshot's (<store>/%s/%s/%s)", ps.Status.StoragePath, ps.Namespace, ps.Spec.PolicyName, ps.Name)
	}
	var p v1.PodSnapshotPolicy
	err = c.Get(ctx, client.ObjectKey{Namespace: ps.Namespace, Name: ps.Spec.PolicyName}, &p)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("read PodSnapshotPolicy %s/%s to check storagePath %q: %w", ps.Namespace, ps.Spec.PolicyName, ps.Status.StoragePath, err)
	}
	if err == nil {
		var cfg v1.PodSnapshotStorageConfig
		if err := c.Get(ctx, client.ObjectKey{Name: p.Spec.StorageConfigName}, &cfg); err != nil {
			return fmt.Errorf("read PodSnapshotStorageConfig %s of PodSnapshotPolicy %s/%s to check storagePath %q: %w",
				p.Spec.StorageConfigName, p.Namespace, p.Name, ps.Status.StoragePath, err)
		}
		if want := strings.TrimSuffix(cfg.StoreURL(), "/"); store != want {
			return fmt.Errorf("storagePath %q is not in the store of PodSnapshotPolicy %s/%s (PodSnapshotStorageConfig %s: %s)",
				ps.Status.StoragePath, p.Namespace, p.Name, cfg.Name, want)
		}
		return nil
	}
	var cfgs v1.PodSnapshotStorageConfigList
	if err := c.List(ctx, &cfgs); err != nil {
		return fmt.Errorf("list PodSnapshotStorageConfigs to check storagePath %q: %w", ps.Status.StoragePath, err)
	}
	for _, cfg := range cfgs.Items {
		if strings.TrimSuffix(cfg.StoreURL(), "/") == store {
			return nil
		}
	}
	return fmt.Errorf("storagePath %q: PodSnapshotPolicy %s/%s is gone and no PodSnapshotStorageConfig serving namespace %s names store %s",
		ps.Status.StoragePath, ps.Namespace, ps.Spec.PolicyName, ps.Namespace, store)
}
