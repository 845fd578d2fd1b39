package controller

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/internal/kubeapi"
	"github.com/podsnapshot/podsnapshot/storage"
	_ "github.com/podsnapshot/podsnapshot/storage/local"
)

var now = time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)

// env is a fake API server holding a storage config for a local store in a temp dir,
// and a repo on that store to commit snapshots with.
type env struct {
	t     *testing.T
	c     client.Client
	store string
	repo  *repo.Repo
	s     *syncer
}

func newEnv(t *testing.T, policy *v1.PodSnapshotPolicy) *env {
	store := t.TempDir()
	cfg := &v1.PodSnapshotStorageConfig{ObjectMeta: metav1.ObjectMeta{Name: "local"},
		Spec: v1.PodSnapshotStorageConfigSpec{SnapshotStorageConfig: v1.SnapshotStorageConfig{Local: &v1.LocalStorage{Path: store}}}}
	c := fake.NewClientBuilder().WithScheme(kubeapi.NewScheme()).
		WithStatusSubresource(&v1.PodSnapshot{}, &v1.PodSnapshotManualTrigger{}).
		WithObjects(cfg, policy).Build()
	st, err := storage.Open(context.Background(), "file://"+store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	log := logrus.New()
	log.SetOutput(os.Stderr)
	return &env{t: t, c: c, store: store, repo: &repo.Repo{Store: st},
		s: &syncer{c: c, opts: Options{LocalStores: true, FailedTTL: time.Hour, Now: func() time.Time { return now }}, log: log}}
}

func policy(rc *v1.RetentionConfig, maxPerGroup int32) *v1.PodSnapshotPolicy {
	p := &v1.PodSnapshotPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: v1.PodSnapshotPolicySpec{Selector: &metav1.LabelSelector{}, StorageConfigName: "local",
			TriggerConfig: v1.TriggerConfig{Type: v1.TriggerWorkload}, RetentionConfig: rc}}
	if maxPerGroup > 0 {
		p.Spec.SnapshotGroupingRules = &v1.SnapshotGroupingRules{GroupRetentionPolicy: &v1.GroupRetentionPolicy{MaxSnapshotCountPerGroup: maxPerGroup}}
	}
	return p
}

// commit stores a snapshot of default/web created age before now.
func (e *env) commit(age time.Duration, fill byte) *manifest.Manifest {
	e.t.Helper()
	img := e.t.TempDir()
	for _, f := range repo.ImageFiles {
		if err := os.WriteFile(filepath.Join(img, f.Local), bytes.Repeat([]byte{fill}, 4096), 0o600); err != nil {
			e.t.Fatal(err)
		}
	}
	tuple := compat.New("release-20260101.0", map[string]string{"platform": "systrap"}, "amd64", nil, nil)
	m := manifest.New("default", "web", strings.Repeat("a", 64), tuple, now.Add(-age))
	if err := e.repo.Commit(context.Background(), m, img); err != nil {
		e.t.Fatal(err)
	}
	return m
}

func (e *env) snapshots() map[string]v1.PodSnapshot {
	var l v1.PodSnapshotList
	if err := e.c.List(context.Background(), &l); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]v1.PodSnapshot{}
	for _, ps := range l.Items {
		out[ps.Name] = ps
	}
	return out
}

// TestSyncAdoptsAndMarksGone: a committed snapshot without an object gets one (Ready,
// storage path, finalizer); an object whose files are gone gets Ready False/Failed.
func TestSyncAdoptsAndMarksGone(t *testing.T) {
	e := newEnv(t, policy(nil, 0))
	m := e.commit(time.Hour, 1)
	must(t, e.s.sync(context.Background()))
	ps, ok := e.snapshots()[m.UUID]
	if !ok {
		t.Fatalf("no PodSnapshot for stored snapshot %s", m.UUID)
	}
	if !meta.IsStatusConditionTrue(ps.Status.Conditions, v1.ConditionReady) || !kubeapi.HasFinalizer(&ps) ||
		ps.Status.StoragePath != "file://"+e.store+"/default/web/"+m.UUID || ps.Spec.PolicyName != "web" {
		t.Fatalf("adopted PodSnapshot = %+v", ps)
	}
	must(t, e.repo.Delete(context.Background(), m))
	must(t, e.s.sync(context.Background()))
	ps = e.snapshots()[m.UUID]
	c := meta.FindStatusCondition(ps.Status.Conditions, v1.ConditionReady)
	if c == nil || c.Status != metav1.ConditionFalse || c.Reason != v1.ReasonFailed || !strings.Contains(c.Message, "no longer in storage") {
		t.Fatalf("Ready after files deleted = %+v", c)
	}
	// Failed for longer than FailedTTL since the controller first saw it Failed (not
	// since the condition's lastTransitionTime, which its writer chose): deleted.
	e.s.opts.Now = func() time.Time { return now.Add(time.Minute) }
	must(t, e.s.sync(context.Background()))
	if ps, ok := e.snapshots()[m.UUID]; !ok || ps.DeletionTimestamp != nil {
		t.Fatal("Failed PodSnapshot deleted before FailedTTL")
	}
	e.s.opts.Now = func() time.Time { return now.Add(2 * time.Hour) }
	must(t, e.s.sync(context.Background()))
	if ps, ok := e.snapshots()[m.UUID]; ok && ps.DeletionTimestamp == nil {
		t.Fatalf("Failed PodSnapshot kept past the TTL: %+v", ps.ObjectMeta)
	}
}

// TestSyncMarksFailedInStorage: a snapshot a restore marked Failed in storage (a node
// whose report never arrived) turns its Ready PodSnapshot Ready False/Failed with the
// manifest's reason.
func TestSyncMarksFailedInStorage(t *testing.T) {
	e := newEnv(t, policy(nil, 0))
	m := e.commit(time.Hour, 1)
	must(t, e.s.sync(context.Background()))
	back, err := e.repo.Get(context.Background(), "default", "web", m.UUID)
	must(t, err)
	must(t, e.repo.MarkFailed(context.Background(), back, "data corrupt: file:///s/pages.img: frame 3: object ends early"))
	must(t, e.s.sync(context.Background()))
	ps := e.snapshots()[m.UUID]
	c := meta.FindStatusCondition(ps.Status.Conditions, v1.ConditionReady)
	if c == nil || c.Status != metav1.ConditionFalse || c.Reason != v1.ReasonFailed || !strings.Contains(c.Message, "marked Failed in storage: data corrupt") {
		t.Fatalf("Ready after the snapshot was marked Failed = %+v", c)
	}
}

// TestRetentionDeletesObjects: lastAccessTimeout and maxSnapshotCountPerGroup are
// carried out as PodSnapshot deletions; the newest are kept.
func TestRetentionDeletesObjects(t *testing.T) {
	e := newEnv(t, policy(&v1.RetentionConfig{LastAccessTimeout: "2d"}, 2))
	old := e.commit(72*time.Hour, 1) // unused for 3 days: expired
	a := e.commit(3*time.Hour, 2)
	b := e.commit(2*time.Hour, 3)
	c := e.commit(1*time.Hour, 4)
	must(t, e.s.sync(context.Background())) // adopts all four
	must(t, e.s.sync(context.Background())) // retention over the adopted objects
	snaps := e.snapshots()
	for _, m := range []*manifest.Manifest{old, a} {
		if ps, ok := snaps[m.UUID]; ok && ps.DeletionTimestamp == nil {
			t.Errorf("PodSnapshot %s (created %s) kept", m.UUID, m.CreatedAt)
		}
	}
	for _, m := range []*manifest.Manifest{b, c} {
		if _, ok := snaps[m.UUID]; !ok {
			t.Errorf("PodSnapshot %s (newest two) deleted", m.UUID)
		}
	}
}

// TestDeletionReleasesAfterFiles: the finalizer is added to objects without it; a
// deleted Cloud Storage-less (no path) snapshot is released at once; a local one is left
// to its node's agent.
func TestDeletionFinalizer(t *testing.T) {
	e := newEnv(t, policy(nil, 0))
	ctx := context.Background()
	ps := &v1.PodSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "0b8f2c7e-6f1a-4d0e-9c2b-1d3e5f7a9b0c"},
		Spec: v1.PodSnapshotSpec{PolicyName: "web"}}
	must(t, e.c.Create(ctx, ps))
	d := &deletion{c: e.c, reader: e.c, log: logrus.New()}
	req := reconcile.Request{NamespacedName: client.ObjectKeyFromObject(ps)}
	if _, err := d.Reconcile(ctx, req); err != nil {
		t.Fatal(err)
	}
	got := e.snapshots()[ps.Name]
	if !kubeapi.HasFinalizer(&got) {
		t.Fatal("finalizer not added")
	}
	must(t, e.c.Delete(ctx, &got))
	if _, err := d.Reconcile(ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Get(ctx, req.NamespacedName, &got); !apierrors.IsNotFound(err) {
		t.Fatalf("PodSnapshot without files kept after delete: %v %+v", err, got.ObjectMeta)
	}
}

// TestMissingTargetFails: a trigger naming no pod fails after the grace period with the
// pod named; one whose pod exists is left to its node's agent.
func TestMissingTargetFails(t *testing.T) {
	e := newEnv(t, policy(nil, 0))
	ctx := context.Background()
	mk := func(name, target string) reconcile.Request {
		tr := &v1.PodSnapshotManualTrigger{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name,
			CreationTimestamp: metav1.NewTime(now.Add(-time.Minute))}, Spec: v1.PodSnapshotManualTriggerSpec{TargetPod: target}}
		must(t, e.c.Create(ctx, tr))
		return reconcile.Request{NamespacedName: client.ObjectKeyFromObject(tr)}
	}
	must(t, e.c.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "there"}, Spec: corev1.PodSpec{NodeName: "n1"}}))
	m := &missingTarget{c: e.c, reader: e.c, now: func() time.Time { return now }}
	for _, req := range []reconcile.Request{mk("t-missing", "nobody"), mk("t-there", "there")} {
		if _, err := m.Reconcile(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	var tr v1.PodSnapshotManualTrigger
	must(t, e.c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "t-missing"}, &tr))
	c := meta.FindStatusCondition(tr.Status.Conditions, v1.ConditionTriggered)
	if c == nil || c.Reason != v1.ReasonFailed || c.Message != "pod default/nobody not found" {
		t.Fatalf("t-missing Triggered = %+v", c)
	}
	must(t, e.c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "t-there"}, &tr))
	if len(tr.Status.Conditions) != 0 {
		t.Fatalf("t-there touched: %+v", tr.Status)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(fmt.Errorf("%w", err))
	}
}

// TestSyncRepairsAwaitingCommitted: a PodSnapshot still AwaitingCheckpoint (its node's
// CheckpointCommitted report lost) whose committed manifest is in the policy's store
// gets Ready True, Checkpoint Succeeded and the storage path; one whose manifest is not
// there keeps waiting.
func TestSyncRepairsAwaitingCommitted(t *testing.T) {
	e := newEnv(t, policy(nil, 0))
	ctx := context.Background()
	m := e.commit(time.Hour, 1)
	const other = "1b8f2c7e-6f1a-4d0e-9c2b-1d3e5f7a9b0c"
	for _, name := range []string{m.UUID, other} {
		ps := &v1.PodSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Finalizers: []string{kubeapi.Finalizer}},
			Spec: v1.PodSnapshotSpec{PolicyName: "web"}}
		must(t, e.c.Create(ctx, ps))
		must(t, kubeapi.SetSnapshotStatus(ctx, e.c, "default", name, func(ps *v1.PodSnapshot) {
			ps.Status.NodeName, ps.Status.SourcePod = "n1", "default/web-0"
			kubeapi.Awaiting(ps, now.Add(-2*time.Hour))
		}))
	}
	must(t, e.s.sync(ctx))
	snaps := e.snapshots()
	ps := snaps[m.UUID]
	if !meta.IsStatusConditionTrue(ps.Status.Conditions, v1.ConditionReady) || !meta.IsStatusConditionTrue(ps.Status.Conditions, v1.ConditionCheckpoint) ||
		ps.Status.StoragePath != "file://"+e.store+"/default/web/"+m.UUID || ps.Status.SourcePod != "default/web-0" {
		t.Fatalf("PodSnapshot awaiting a committed snapshot after sync: %+v", ps.Status)
	}
	if c := meta.FindStatusCondition(snaps[other].Status.Conditions, v1.ConditionReady); c == nil || c.Reason != v1.ReasonAwaitingCheckpoint {
		t.Fatalf("PodSnapshot without a manifest: Ready = %+v, want still AwaitingCheckpoint", c)
	}
}
