package controller

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/internal/kubeapi"
	"github.com/podsnapshot/podsnapshot/storage"
)

// deleted creates PodSnapshot default/name of policy with status.storagePath path and
// nodeName node, and deletes it (its finalizer keeps it).
func (e *env) deleted(name, policy, path, node string) reconcile.Request {
	e.t.Helper()
	ctx := context.Background()
	ps := &v1.PodSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Finalizers: []string{kubeapi.Finalizer}},
		Spec: v1.PodSnapshotSpec{PolicyName: policy}}
	must(e.t, e.c.Create(ctx, ps))
	must(e.t, kubeapi.SetSnapshotStatus(ctx, e.c, "default", name, func(ps *v1.PodSnapshot) {
		ps.Status.StoragePath, ps.Status.NodeName = path, node
	}))
	must(e.t, e.c.Delete(ctx, ps))
	return reconcile.Request{NamespacedName: client.ObjectKeyFromObject(ps)}
}

// gone tells whether the object of req is gone.
func (e *env) gone(req reconcile.Request) bool {
	err := e.c.Get(context.Background(), req.NamespacedName, &v1.PodSnapshot{})
	if err != nil && !apierrors.IsNotFound(err) {
		e.t.Fatal(err)
	}
	return err != nil
}

// TestDeletionLocalNodeGone: a local-store PodSnapshot being deleted waits for its node's
// agent while the node exists, and goes once the Node object is gone (its files went with
// the node); the Node's deletion requeues it.
func TestDeletionLocalNodeGone(t *testing.T) {
	e := newEnv(t, policy(nil, 0))
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
	must(t, e.c.Create(ctx, node))
	m := e.commit(time.Hour, 1)
	req := e.deleted(m.UUID, "web", "file://"+e.store+"/default/web/"+m.UUID, "node-a")
	d := &deletion{c: e.c, reader: e.c, log: logrus.New()}
	if _, err := d.Reconcile(ctx, req); err != nil {
		t.Fatal(err)
	}
	if e.gone(req) {
		t.Fatal("local PodSnapshot let go while its node exists (its agent deletes the files)")
	}
	must(t, e.c.Delete(ctx, node))
	if got := localSnapshotsOf(e.c)(ctx, node); len(got) != 1 || got[0] != req {
		t.Fatalf("Node deletion requeues %v, want [%v]", got, req)
	}
	if _, err := d.Reconcile(ctx, req); err != nil {
		t.Fatal(err)
	}
	if !e.gone(req) {
		t.Fatal("local PodSnapshot of a node that is gone kept: kubectl delete would hang")
	}
}

// TestReleaseChecksPolicyStore: the controller deletes files only at a storagePath in the
// store of the snapshot's own policy (or, once the policy is gone, of a storage config);
// an object pointing elsewhere goes and the files there stay.
func TestReleaseChecksPolicyStore(t *testing.T) {
	e := newEnv(t, policy(nil, 0))
	ctx := context.Background()
	other := &v1.PodSnapshotStorageConfig{ObjectMeta: metav1.ObjectMeta{Name: "other"},
		Spec: v1.PodSnapshotStorageConfigSpec{SnapshotStorageConfig: v1.SnapshotStorageConfig{Local: &v1.LocalStorage{Path: t.TempDir()}}}}
	p2 := policy(nil, 0)
	p2.Name, p2.Spec.StorageConfigName = "web2", "other"
	must(t, e.c.Create(ctx, other))
	must(t, e.c.Create(ctx, p2))
	stored := func(uuid string) bool {
		_, err := e.repo.Get(ctx, "default", "web", uuid)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	e.s.opts.LocalStores = true
	d := &deletion{c: e.c, reader: e.c, localStores: true, log: logrus.New()}
	release := func(req reconcile.Request) {
		t.Helper()
		if _, err := d.Reconcile(ctx, req); err != nil {
			t.Fatal(err)
		}
		if !e.gone(req) {
			t.Fatalf("PodSnapshot %s kept", req)
		}
	}

	// Policy web2's store is "other": a path into "local" is not its snapshot's.
	m := e.commit(time.Hour, 1)
	release(e.deleted(m.UUID, "web2", "file://"+e.store+"/default/web/"+m.UUID, ""))
	if !stored(m.UUID) {
		t.Fatal("files deleted at a storagePath outside the store of the PodSnapshot's policy")
	}
	// Its own policy's store: deleted.
	release(e.deleted(m.UUID, "web", "file://"+e.store+"/default/web/"+m.UUID, ""))
	if stored(m.UUID) {
		t.Fatal("files of the PodSnapshot's own snapshot not deleted")
	}
	// Policy gone: a store some storage config names still serves.
	m = e.commit(time.Hour, 2)
	must(t, e.c.Delete(ctx, p2))
	must(t, e.c.Delete(ctx, &v1.PodSnapshotPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"}}))
	release(e.deleted(m.UUID, "web", "file://"+e.store+"/default/web/"+m.UUID, ""))
	if stored(m.UUID) {
		t.Fatal("files of a snapshot whose policy is gone not deleted from a configured store")
	}
	// A store no storage config names: kept.
	must(t, e.c.Delete(ctx, &v1.PodSnapshotStorageConfig{ObjectMeta: metav1.ObjectMeta{Name: "local"}}))
	m = e.commit(time.Hour, 3)
	release(e.deleted(m.UUID, "web", "file://"+e.store+"/default/web/"+m.UUID, ""))
	if !stored(m.UUID) {
		t.Fatal("files deleted in a store no PodSnapshotStorageConfig names")
	}
}

// TestForgedFailedNotExpired: a PodSnapshot whose Ready condition says Failed, with a
// lastTransitionTime long past (conditions are what any agent may write on another
// node's snapshot), while its committed manifest is intact in its store, is not deleted
// by the Failed TTL: its files stay.
func TestForgedFailedNotExpired(t *testing.T) {
	e := newEnv(t, policy(nil, 0))
	ctx := context.Background()
	m := e.commit(time.Hour, 1)
	must(t, e.s.sync(ctx))
	must(t, kubeapi.SetSnapshotStatus(ctx, e.c, "default", m.UUID, func(ps *v1.PodSnapshot) {
		kubeapi.Unusable(ps, "forged", time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC))
	}))
	for _, after := range []time.Duration{time.Minute, 2 * time.Hour, 4 * time.Hour} {
		e.s.opts.Now = func() time.Time { return now.Add(after) }
		must(t, e.s.sync(ctx))
	}
	if ps, ok := e.snapshots()[m.UUID]; !ok || ps.DeletionTimestamp != nil {
		t.Fatal("PodSnapshot of an intact committed snapshot deleted for a Failed condition")
	}
	if _, err := e.repo.Get(ctx, "default", "web", m.UUID); err != nil {
		t.Fatalf("files of an intact committed snapshot: %v", err)
	}
}

// TestTriggerOfGoneNodeFails: a trigger checkpointing on a node (status.nodeName) is left
// to that node's agent while the node exists, and failed by the controller once the Node
// is gone (no other agent may write it, and no report will come).
func TestTriggerOfGoneNodeFails(t *testing.T) {
	e := newEnv(t, policy(nil, 0))
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}}
	must(t, e.c.Create(ctx, node))
	tr := &v1.PodSnapshotManualTrigger{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "t"},
		Spec: v1.PodSnapshotManualTriggerSpec{TargetPod: "p"}}
	must(t, e.c.Create(ctx, tr))
	key := client.ObjectKeyFromObject(tr)
	must(t, kubeapi.SetTriggered(ctx, e.c, key, "node-b", metav1.ConditionUnknown, "Checkpointing", "checkpointing pod default/p", ""))
	m := &missingTarget{c: e.c, reader: e.c, now: func() time.Time { return now }}
	reason := func() string {
		must(t, e.c.Get(ctx, key, tr))
		return meta.FindStatusCondition(tr.Status.Conditions, v1.ConditionTriggered).Reason
	}
	res, err := m.Reconcile(ctx, reconcile.Request{NamespacedName: key})
	must(t, err)
	if reason() != "Checkpointing" || res.RequeueAfter == 0 {
		t.Fatalf("trigger of a live node: %s, requeue %v", reason(), res)
	}
	must(t, e.c.Delete(ctx, node))
	_, err = m.Reconcile(ctx, reconcile.Request{NamespacedName: key})
	must(t, err)
	if r, c := reason(), meta.FindStatusCondition(tr.Status.Conditions, v1.ConditionTriggered); r != v1.ReasonFailed || c.Message != "node node-b, which was checkpointing pod default/p, is gone" {
		t.Fatalf("trigger of a gone node: %+v", c)
	}
}
