package kubeapi

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
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
			if !errors.Is(err, ErrNotThisSnapshot) {
				// The API could not be read: not a verdict on the path. Retry.
				log.WithError(err).Warnf("PodSnapshot %s: storagePath not checked yet", id)
				return reconcile.Result{RequeueAfter: 10 * time.Second}, nil
			}
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
// a PodSnapshotStorageConfig that allows the namespace (not only the policy's own: a
// policy may have been moved to another config, or be gone with its namespace). So an
// agent that wrote another path into the status cannot have the controller delete files
// of another store, namespace, policy or snapshot. A path that is not the snapshot's is
// ErrNotThisSnapshot, naming the path and what it should have been; other errors are the
// API's.
func CheckStoragePath(ctx context.Context, c client.Client, ps *v1.PodSnapshot) error {
	store, ns, pol, uuid, err := SplitStoragePath(ps.Status.StoragePath)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotThisSnapshot, err)
	}
	if ns != ps.Namespace || pol != ps.Spec.PolicyName || uuid != ps.Name {
		return fmt.Errorf("%w: storagePath %q is not this snapshot's (<store>/%s/%s/%s)", ErrNotThisSnapshot, ps.Status.StoragePath, ps.Namespace, ps.Spec.PolicyName, ps.Name)
	}
	// Any store a policy of the namespace may use: the policy's own config may have been
	// re-pointed (storageConfigName is mutable) or be gone; what matters is that the
	// namespace may write there, so no agent can point the controller at another
	// tenant's files.
	var cfgs v1.PodSnapshotStorageConfigList
	if err := c.List(ctx, &cfgs); err != nil {
		return fmt.Errorf("list PodSnapshotStorageConfigs to check storagePath %q: %w", ps.Status.StoragePath, err)
	}
	for i := range cfgs.Items {
		cfg := &cfgs.Items[i]
		if cfg.AllowsNamespace(ps.Namespace) && sameStore(cfg.StoreURL(), store) {
			return nil
		}
	}
	return fmt.Errorf("%w: storagePath %q: no PodSnapshotStorageConfig that allows namespace %s names store %s",
		ErrNotThisSnapshot, ps.Status.StoragePath, ps.Namespace, store)
}

// ErrNotThisSnapshot marks a storagePath that CheckStoragePath found not to be the
// snapshot's: its files are left alone and the object goes.
var ErrNotThisSnapshot = errors.New("not this snapshot's storage path")

// sameStore compares a storage config's URL (StoreURL, escaped) with the store part of a
// storagePath the shim wrote (Store.URL, unescaped).
func sameStore(cfgURL, store string) bool {
	u, err := url.Parse(cfgURL)
	if err != nil {
		return false
	}
	root := strings.TrimSuffix(u.Scheme+"://"+u.Host+u.Path, "/")
	return root == strings.TrimSuffix(store, "/")
}
