// Package kubeapi holds what the node agent and the controller share about the
// podsnapshot.gke.io objects in a cluster: the scheme, the PodSnapshot finalizer, status
// updates in GKE's shape, and deleting a snapshot's files from its storage path.
package kubeapi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/storage"
)

// Finalizer is on every PodSnapshot the agent creates: the object goes only after its
// files are deleted from storage (by the controller for Cloud Storage, by the agent of
// status.nodeName for a local store).
const Finalizer = "podsnapshot.gke.io/podsnapshot-finalizer"

// PodRestored is the Pod condition set on restored pods (True, message naming the
// PodSnapshot).
const PodRestored corev1.PodConditionType = "PodRestored"

// NewScheme is client-go's scheme plus podsnapshot.gke.io/v1.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := v1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// SetSnapshotStatus applies change to the current status of PodSnapshot ns/name through
// the status subresource, retrying on conflicts. A snapshot that does not exist is
// returned as a NotFound error.
func SetSnapshotStatus(ctx context.Context, c client.Client, ns, name string, change func(*v1.PodSnapshot)) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var ps v1.PodSnapshot
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &ps); err != nil {
			return err
		}
		before := ps.Status.DeepCopy()
		change(&ps)
		ps.Status.ObservedGeneration = ps.Generation
		if equality.Semantic.DeepEqual(before, &ps.Status) {
			return nil
		}
		return c.Status().Update(ctx, &ps)
	})
}

// SetCondition sets one condition, keeping LastTransitionTime when the status is
// unchanged (meta.SetStatusCondition's rule) and stamping at otherwise.
func SetCondition(conds *[]metav1.Condition, typ string, status metav1.ConditionStatus, reason, msg string, gen int64, at time.Time) {
	meta.SetStatusCondition(conds, metav1.Condition{Type: typ, Status: status, Reason: reason,
		Message: msg, ObservedGeneration: gen, LastTransitionTime: metav1.NewTime(at)})
}

// SetTriggered sets trigger key's Triggered condition (and status.snapshotCreated when
// snapshot is set, status.nodeName when node is set and it has none) through the status
// subresource, retrying on conflicts, unless a final outcome (True or False) is already
// recorded: the first outcome stays. A trigger that no longer exists is not an error.
// The agents pass their node; the controller, which is no node's, passes "".
func SetTriggered(ctx context.Context, c client.Client, key client.ObjectKey, node string, status metav1.ConditionStatus, reason, msg, snapshot string) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var cur v1.PodSnapshotManualTrigger
		if err := c.Get(ctx, key, &cur); err != nil {
			return client.IgnoreNotFound(err)
		}
		if cond := meta.FindStatusCondition(cur.Status.Conditions, v1.ConditionTriggered); cond != nil && cond.Status != metav1.ConditionUnknown {
			return nil
		}
		meta.SetStatusCondition(&cur.Status.Conditions, metav1.Condition{Type: v1.ConditionTriggered, Status: status,
			Reason: reason, Message: msg, ObservedGeneration: cur.Generation})
		if snapshot != "" {
			cur.Status.SnapshotCreated = &v1.SnapshotReference{Name: snapshot}
		}
		if node != "" && cur.Status.NodeName == "" {
			cur.Status.NodeName = node
		}
		return c.Status().Update(ctx, &cur)
	})
}

// Awaiting sets Ready False/AwaitingCheckpoint unless a checkpoint outcome is recorded.
func Awaiting(ps *v1.PodSnapshot, at time.Time) {
	if meta.FindStatusCondition(ps.Status.Conditions, v1.ConditionCheckpoint) != nil {
		return
	}
	SetCondition(&ps.Status.Conditions, v1.ConditionReady, metav1.ConditionFalse, v1.ReasonAwaitingCheckpoint,
		"waiting for the pod's checkpoint", ps.Generation, at)
}

// Committed sets Ready True/AllSnapshotsAvailable and Checkpoint True/Succeeded.
func Committed(ps *v1.PodSnapshot, at time.Time) {
	SetCondition(&ps.Status.Conditions, v1.ConditionReady, metav1.ConditionTrue, v1.ReasonAllSnapshotsAvailable,
		"every file of the snapshot is stored", ps.Generation, at)
	SetCondition(&ps.Status.Conditions, v1.ConditionCheckpoint, metav1.ConditionTrue, v1.ReasonSucceeded,
		"checkpoint committed", ps.Generation, at)
}

// Failed sets Ready False/Failed and Checkpoint False/Failed with msg, unless the
// snapshot was already committed (a failure reported late changes nothing).
func Failed(ps *v1.PodSnapshot, msg string, at time.Time) {
	if meta.IsStatusConditionTrue(ps.Status.Conditions, v1.ConditionReady) {
		return
	}
	SetCondition(&ps.Status.Conditions, v1.ConditionReady, metav1.ConditionFalse, v1.ReasonFailed, msg, ps.Generation, at)
	SetCondition(&ps.Status.Conditions, v1.ConditionCheckpoint, metav1.ConditionFalse, v1.ReasonFailed, msg, ps.Generation, at)
}

// Unusable sets Ready False/Failed with msg: the snapshot can no longer be restored from
// (its manifest is gone from storage, or a restore found its files corrupt and marked it
// Failed there). The Checkpoint condition keeps what the checkpoint did.
func Unusable(ps *v1.PodSnapshot, msg string, at time.Time) {
	SetCondition(&ps.Status.Conditions, v1.ConditionReady, metav1.ConditionFalse, v1.ReasonFailed, msg, ps.Generation, at)
}

// IgnoreNotFound is nil for a NotFound API error, else err.
func IgnoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// SplitStoragePath splits a PodSnapshot's status.storagePath, "<store URL>/<namespace>/
// <policy>/<uuid>" (e.g. "gs://bucket/path/ns/policy/uuid" or
// "file:///var/lib/podsnapshot/store/ns/policy/uuid"), into the store URL and the three
// names. It fails when fewer than three names follow the URL's scheme and host.
func SplitStoragePath(p string) (storeURL, namespace, policy, uuid string, err error) {
	scheme, rest, ok := strings.Cut(p, "://")
	parts := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	if !ok || len(parts) < 4 {
		return "", "", "", "", fmt.Errorf("storage path %q: want <store URL>/<namespace>/<policy>/<uuid>", p)
	}
	n := len(parts)
	return scheme + "://" + strings.Join(parts[:n-3], "/"), parts[n-3], parts[n-2], parts[n-1], nil
}

// DeleteFiles deletes the snapshot at storagePath from its store: manifest first, then
// its files and index marker (repo.Delete). A snapshot whose manifest is already gone is
// not an error (gone reports it): its leftover parts are what `podsnapshot gc` removes.
func DeleteFiles(ctx context.Context, storagePath string) (gone bool, err error) {
	url, ns, pol, uuid, err := SplitStoragePath(storagePath)
	if err != nil {
		return false, err
	}
	if root, ok := strings.CutPrefix(url, "file://"); ok {
		// Opening a local store creates its root; a root missing here means this
		// process does not see the node's directory (not mounted into the agent): the
		// files would stay while the object went.
		if _, err := os.Stat(root); err != nil {
			return false, fmt.Errorf("local store %s not reachable from this process (mounted into the agent?): %w", root, err)
		}
	}
	st, err := storage.Open(ctx, url)
	if err != nil {
		return false, fmt.Errorf("open store %s: %w", url, err)
	}
	defer st.Close()
	r := &repo.Repo{Store: st}
	m, err := r.Get(ctx, ns, pol, uuid)
	if errors.Is(err, storage.ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read snapshot %s: %w", storagePath, err)
	}
	if err := r.Delete(ctx, m); err != nil {
		return false, fmt.Errorf("delete snapshot %s: %w", storagePath, err)
	}
	return false, nil
}

// RemoveFinalizer drops Finalizer from ps with a merge patch.
func RemoveFinalizer(ctx context.Context, c client.Client, ps *v1.PodSnapshot) error {
	base := ps.DeepCopy()
	var keep []string
	for _, f := range ps.Finalizers {
		if f != Finalizer {
			keep = append(keep, f)
		}
	}
	ps.Finalizers = keep
	return IgnoreNotFound(c.Patch(ctx, ps, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})))
}

// HasFinalizer reports whether ps carries Finalizer.
func HasFinalizer(ps *v1.PodSnapshot) bool {
	for _, f := range ps.Finalizers {
		if f == Finalizer {
			return true
		}
	}
	return false
}

// IsLocal reports whether ps is stored in a node-local store (status.storagePath
// file://...): its files are on status.nodeName only, and that node's agent deletes them.
func IsLocal(ps *v1.PodSnapshot) bool {
	return strings.HasPrefix(ps.Status.StoragePath, "file://")
}
