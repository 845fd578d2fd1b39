package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/policy"
	"github.com/podsnapshot/podsnapshot/internal/kubeapi"
	"github.com/podsnapshot/podsnapshot/internal/report"
)

const node = "node-a"

func newFake(objs ...client.Object) client.WithWatch {
	return fake.NewClientBuilder().WithScheme(kubeapi.NewScheme()).
		WithStatusSubresource(&v1.PodSnapshot{}, &v1.PodSnapshotManualTrigger{}, &corev1.Pod{}).
		WithObjects(objs...).Build()
}

func pod(name, uid string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID(uid), Labels: map[string]string{"app": "counter"}},
		Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
}

func newReporter(t *testing.T, c client.Client) (*reporter, report.Spool) {
	sp := report.Spool{Dir: t.TempDir()}
	log := logrus.New()
	log.SetOutput(testWriter{t})
	return &reporter{c: c, reader: c, spool: sp, node: node, interval: time.Millisecond, now: time.Now,
		triggers: &triggers{c: c, node: node, log: log, now: time.Now}, metrics: newMetrics(prometheus.NewRegistry()), log: log}, sp
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

const uuid = "0b8f2c7e-6f1a-4d0e-9c2b-1d3e5f7a9b0c"

func rep(kind report.Kind, podName, podUID string) report.Report {
	return report.Report{Kind: kind, Pod: report.Pod{Namespace: "default", Name: podName, UID: podUID},
		SandboxID: "sb1", Policy: "counter-policy", Snapshot: uuid, Time: time.Now()}
}

// TestSnapshotLifecycle: cold start -> AwaitingCheckpoint, commit -> AllSnapshotsAvailable
// with the event, restore -> lastAccessTime, PodRestored and the restore event; the spool
// is empty afterwards and each report counted once.
func TestSnapshotLifecycle(t *testing.T) {
	ctx := context.Background()
	c := newFake(pod("counter", "u1"), pod("counter2", "u2"))
	r, sp := newReporter(t, c)

	cold := rep(report.ColdStart, "counter", "u1")
	cold.Reason, cold.Message = report.ReasonNoSnapshot, "cold start: no snapshot for key 1234"
	cold.Scope = "rootfs-only"
	must(t, sp.Write(cold))
	r.drain(ctx)
	ps := getSnap(t, c)
	if got := readyReason(ps); got != v1.ReasonAwaitingCheckpoint {
		t.Fatalf("Ready reason after cold start = %q, want AwaitingCheckpoint", got)
	}
	if !kubeapi.HasFinalizer(ps) || ps.Status.NodeName != node || ps.Status.SourcePod != "default/counter" || ps.Spec.PolicyName != "counter-policy" ||
		ps.Status.SnapshotScope != v1.ScopeRootfsOnly {
		t.Fatalf("created PodSnapshot = %+v", ps)
	}

	commit := rep(report.CheckpointCommitted, "counter", "u1")
	commit.StoragePath = "file:///store/default/counter-policy/" + uuid
	must(t, sp.Write(commit))
	r.drain(ctx)
	ps = getSnap(t, c)
	if readyReason(ps) != v1.ReasonAllSnapshotsAvailable || !meta.IsStatusConditionTrue(ps.Status.Conditions, v1.ConditionCheckpoint) || ps.Status.StoragePath != commit.StoragePath {
		t.Fatalf("after commit: %+v", ps.Status)
	}

	restored := rep(report.Restored, "counter2", "u2")
	restored.CacheHit = true
	must(t, sp.Write(restored))
	r.drain(ctx)
	ps = getSnap(t, c)
	if ps.Status.LastAccessTime == nil || ps.Status.LastAccessTime.Time.Unix() != restored.Time.Unix() {
		t.Fatalf("lastAccessTime = %v, want %v", ps.Status.LastAccessTime, restored.Time)
	}
	var p corev1.Pod
	must(t, c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "counter2"}, &p))
	if !hasPodRestored(&p, "Restored from PodSnapshot default/"+uuid) {
		t.Fatalf("pod conditions = %+v", p.Status.Conditions)
	}
	msgs := eventMessages(t, c)
	for _, want := range []string{
		"Started the pod without a snapshot (NoSnapshot): cold start: no snapshot for key 1234",
		"Successfully checkpointed the pod to PodSnapshot default/" + uuid,
		"Successfully restored the pod from PodSnapshot default/" + uuid,
	} {
		if !contains(msgs, want) {
			t.Errorf("no event %q in %q", want, msgs)
		}
	}
	if left, _, _ := sp.List(); len(left) != 0 {
		t.Errorf("%d reports left in the spool", len(left))
	}
	if got := testutil.ToFloat64(r.metrics.restores.WithLabelValues("cache")); got != 1 {
		t.Errorf("restores{source=cache} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(r.metrics.coldStarts.WithLabelValues(report.ReasonNoSnapshot)); got != 1 {
		t.Errorf("cold_starts{NoSnapshot} = %v, want 1", got)
	}
}

// TestSnapshotFoundBad: a restore that found the snapshot corrupt turns its PodSnapshot
// Ready False/Failed with the reason (its Checkpoint condition stays Succeeded); a
// restored pod stopped for its pages gets a Warning event saying why, and is counted.
func TestSnapshotFoundBad(t *testing.T) {
	ctx := context.Background()
	c := newFake(pod("counter", "u1"), pod("counter2", "u2"))
	r, sp := newReporter(t, c)
	must(t, sp.Write(rep(report.CheckpointCommitted, "counter", "u1")))
	r.drain(ctx)

	bad := rep(report.SnapshotFailed, "counter2", "u2")
	bad.Message = "a restore found it corrupt: gs://b/p/pages.img: frame 7: object ends early"
	stopped := rep(report.RestoredPodStopped, "counter2", "u2")
	stopped.Message = "the pod restored from snapshot default/" + uuid + " could not load the rest of its memory"
	must(t, sp.Write(bad))
	must(t, sp.Write(stopped))
	r.drain(ctx)
	ps := getSnap(t, c)
	ready := meta.FindStatusCondition(ps.Status.Conditions, v1.ConditionReady)
	if ready == nil || ready.Status != metav1.ConditionFalse || ready.Reason != v1.ReasonFailed || ready.Message != bad.Message ||
		!meta.IsStatusConditionTrue(ps.Status.Conditions, v1.ConditionCheckpoint) {
		t.Fatalf("PodSnapshot after SnapshotFailed: %+v", ps.Status.Conditions)
	}
	msgs := eventMessages(t, c)
	for _, want := range []string{
		"PodSnapshot default/" + uuid + " is unusable and marked Failed; later pods start cold: " + bad.Message,
		"Stopped the pod restored from PodSnapshot default/" + uuid + ": " + stopped.Message,
	} {
		if !contains(msgs, want) {
			t.Errorf("no event %q in %q", want, msgs)
		}
	}
	if got := testutil.ToFloat64(r.metrics.restoredStopped); got != 1 {
		t.Errorf("restored_pods_stopped = %v, want 1", got)
	}
}

// TestReportKeptUntilDelivered: while the API server refuses writes, the report stays in
// the spool; once it answers, the report is delivered once (no duplicate event).
func TestReportKeptUntilDelivered(t *testing.T) {
	ctx := context.Background()
	down := true
	base := newFake(pod("counter", "u1"))
	c := interceptor.NewClient(base, interceptor.Funcs{
		Create: func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if _, ev := obj.(*corev1.Event); ev && down {
				return errUnavailable
			}
			return cl.Create(ctx, obj, opts...)
		},
	})
	r, sp := newReporter(t, c)
	commit := rep(report.CheckpointCommitted, "counter", "u1")
	must(t, sp.Write(commit))
	r.drain(ctx)
	if left, _, _ := sp.List(); len(left) != 1 {
		t.Fatalf("spool holds %d reports while the API server is down, want 1", len(left))
	}
	down = false
	r.drain(ctx)
	r.drain(ctx)
	if left, _, _ := sp.List(); len(left) != 0 {
		t.Fatalf("spool holds %d reports after delivery", len(left))
	}
	if msgs := eventMessages(t, base); len(msgs) != 1 {
		t.Fatalf("events = %q, want exactly one", msgs)
	}
	if readyReason(getSnap(t, base)) != v1.ReasonAllSnapshotsAvailable {
		t.Fatal("snapshot not Ready after delivery")
	}
}

// TestFailedCheckpointFailsTrigger: a trigger in progress for the pod gets False/Failed
// with the report's message; a committed report completes the next one.
func TestTriggerOutcomeFromReports(t *testing.T) {
	ctx := context.Background()
	inProgress := func(name string) *v1.PodSnapshotManualTrigger {
		return &v1.PodSnapshotManualTrigger{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec: v1.PodSnapshotManualTriggerSpec{TargetPod: "counter"},
			Status: v1.PodSnapshotManualTriggerStatus{Conditions: []metav1.Condition{{Type: v1.ConditionTriggered,
				Status: metav1.ConditionUnknown, Reason: ReasonCheckpointing, LastTransitionTime: metav1.Now()}}}}
	}
	c := newFake(pod("counter", "u1"), inProgress("t1"))
	r, sp := newReporter(t, c)
	failed := rep(report.CheckpointFailed, "counter", "u1")
	failed.Message = "runsc checkpoint: exit status 1"
	must(t, sp.Write(failed))
	r.drain(ctx)
	var tr v1.PodSnapshotManualTrigger
	must(t, c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "t1"}, &tr))
	if cond := meta.FindStatusCondition(tr.Status.Conditions, v1.ConditionTriggered); cond == nil || cond.Reason != v1.ReasonFailed || !strings.Contains(cond.Message, "exit status 1") {
		t.Fatalf("t1 Triggered = %+v", cond)
	}
	if readyReason(getSnap(t, c)) != v1.ReasonFailed {
		t.Fatalf("snapshot Ready reason = %q, want Failed", readyReason(getSnap(t, c)))
	}

	must(t, c.Create(ctx, inProgress("t2")))
	must(t, c.Status().Update(ctx, inProgress2(t, c, "t2")))
	commit := rep(report.CheckpointCommitted, "counter", "u1")
	commit.Snapshot = "1b8f2c7e-6f1a-4d0e-9c2b-1d3e5f7a9b0c"
	must(t, sp.Write(commit))
	r.drain(ctx)
	must(t, c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "t2"}, &tr))
	if cond := meta.FindStatusCondition(tr.Status.Conditions, v1.ConditionTriggered); cond == nil || cond.Reason != v1.ReasonComplete ||
		tr.Status.SnapshotCreated == nil || tr.Status.SnapshotCreated.Name != commit.Snapshot {
		t.Fatalf("t2 status = %+v", tr.Status)
	}
}

// inProgress2 re-applies the in-progress status (Create drops status with a status
// subresource).
func inProgress2(t *testing.T, c client.Client, name string) *v1.PodSnapshotManualTrigger {
	var tr v1.PodSnapshotManualTrigger
	must(t, c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: name}, &tr))
	tr.Status.Conditions = []metav1.Condition{{Type: v1.ConditionTriggered, Status: metav1.ConditionUnknown,
		Reason: ReasonCheckpointing, LastTransitionTime: metav1.Now()}}
	return &tr
}

// TestMirrorFileLoads: what the mirror writes is read by the shim's policy loader with
// no error, and the policy matches; an unchanged cluster rewrites nothing.
func TestMirrorFileLoads(t *testing.T) {
	sc := &v1.PodSnapshotStorageConfig{ObjectMeta: metav1.ObjectMeta{Name: "local"},
		Spec: v1.PodSnapshotStorageConfigSpec{SnapshotStorageConfig: v1.SnapshotStorageConfig{Local: &v1.LocalStorage{Path: "/var/lib/podsnapshot/store"}}}}
	pol := &v1.PodSnapshotPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "counter-policy", CreationTimestamp: metav1.Now()},
		Spec: v1.PodSnapshotPolicySpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "counter"}},
			StorageConfigName: "local", TriggerConfig: v1.TriggerConfig{Type: v1.TriggerWorkload, PostCheckpoint: v1.PostCheckpointResume},
			SnapshotScope: v1.ScopeWholePod}}
	m := newMirror(t, newFake(sc, pol))
	reconcileMirror(t, m)
	nsFile := filepath.Join(m.dir, NamespaceFile("default"))
	st, err := os.Stat(nsFile)
	must(t, err)
	reconcileMirror(t, m)
	if st2, err := os.Stat(nsFile); err != nil || !os.SameFile(st, st2) {
		t.Fatal("identical content rewritten")
	}
	set := policy.Load(m.dir)
	if len(set.Errors) > 0 {
		t.Fatalf("loader errors: %v", set.Errors)
	}
	if m := set.Match("default", map[string]string{"app": "counter"}); !m.Found() || m.StoreURL != "file:///var/lib/podsnapshot/store" {
		t.Fatalf("match = %+v", m)
	}
	for _, name := range []string{StorageConfigFile, NamespaceFile("default")} {
		data, err := os.ReadFile(filepath.Join(m.dir, name))
		must(t, err)
		if strings.Contains(string(data), "managedFields") || strings.Contains(string(data), "resourceVersion") {
			t.Fatalf("mirror keeps server-side metadata:\n%s", data)
		}
	}
	if entries, _ := os.ReadDir(m.dir); len(entries) != 2 {
		t.Fatalf("policy dir holds %d files, want only %s and %s", len(entries), StorageConfigFile, NamespaceFile("default"))
	}
}

func getSnap(t *testing.T, c client.Client) *v1.PodSnapshot {
	t.Helper()
	var ps v1.PodSnapshot
	must(t, c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: uuid}, &ps))
	return &ps
}

func readyReason(ps *v1.PodSnapshot) string {
	if c := meta.FindStatusCondition(ps.Status.Conditions, v1.ConditionReady); c != nil {
		return c.Reason
	}
	return ""
}

func hasPodRestored(p *corev1.Pod, msg string) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == kubeapi.PodRestored && c.Status == corev1.ConditionTrue && c.Message == msg {
			return true
		}
	}
	return false
}

func eventMessages(t *testing.T, c client.Client) []string {
	var evs corev1.EventList
	must(t, c.List(context.Background(), &evs))
	var out []string
	for _, e := range evs.Items {
		if e.Reason != v1.EventReason {
			t.Errorf("event reason %q", e.Reason)
		}
		out = append(out, e.Message)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var errUnavailable = apierrors.NewServiceUnavailable("the API server is down")

// TestRefusedReportSetAside: a report the API server refuses with a 403 (here: on its
// PodSnapshot) is retried for refuseWindow, then set aside as .refused-*; the report of
// another namespace behind it is delivered meanwhile.
func TestRefusedReportSetAside(t *testing.T) {
	ctx := context.Background()
	base := newFake(pod("counter", "u1"), pod("other", "u2"))
	c := interceptor.NewClient(base, interceptor.Funcs{
		Create: func(ctx context.Context, cl client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if ps, ok := obj.(*v1.PodSnapshot); ok && ps.Namespace == "gone" {
				return apierrors.NewForbidden(v1.SchemeGroupVersion.WithResource("podsnapshots").GroupResource(), ps.Name,
					errors.New("namespace gone is being terminated"))
			}
			return cl.Create(ctx, obj, opts...)
		},
	})
	r, sp := newReporter(t, c)
	clock := time.Now()
	r.now = func() time.Time { return clock }
	stuck := rep(report.CheckpointStarted, "x", "u9")
	stuck.Pod.Namespace = "gone"
	must(t, sp.Write(stuck))
	next := rep(report.CheckpointCommitted, "counter", "u1")
	next.Time = stuck.Time.Add(time.Millisecond)
	must(t, sp.Write(next))
	r.drain(ctx)
	r.drain(ctx)
	if left, _, _ := sp.List(); len(left) != 1 || left[0].Report.Pod.Namespace != "gone" {
		t.Fatalf("spool within the refusal window = %+v, want only the refused report", left)
	}
	if readyReason(getSnap(t, base)) != v1.ReasonAllSnapshotsAvailable {
		t.Fatal("the other namespace's report behind the refused one was not delivered")
	}
	clock = clock.Add(refuseWindow + time.Second)
	r.drain(ctx)
	if left, _, _ := sp.List(); len(left) != 0 {
		t.Fatalf("%d reports left after the refused one was set aside", len(left))
	}
	entries, _ := os.ReadDir(sp.Dir)
	if len(entries) != 1 || !strings.HasPrefix(entries[0].Name(), ".refused-") {
		t.Fatalf("spool dir holds %v, want the refused report set aside", entries)
	}
	if got := testutil.ToFloat64(r.metrics.refused); got != 1 {
		t.Fatalf("refused metric %v", got)
	}
}

// TestTriggerWithoutOutcomeFails: a trigger left Triggered Unknown (its checkpoint's
// report never came) fails after outcomeDeadline; before that it is looked at again.
func TestTriggerWithoutOutcomeFails(t *testing.T) {
	ctx := context.Background()
	start := time.Now().Add(-outcomeDeadline + time.Minute)
	tr := &v1.PodSnapshotManualTrigger{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "t1"},
		Spec: v1.PodSnapshotManualTriggerSpec{TargetPod: "counter"},
		Status: v1.PodSnapshotManualTriggerStatus{Conditions: []metav1.Condition{{Type: v1.ConditionTriggered,
			Status: metav1.ConditionUnknown, Reason: ReasonCheckpointing, LastTransitionTime: metav1.NewTime(start)}}}}
	c := newFake(pod("counter", "u1"), tr)
	clock := time.Now()
	trig := &triggers{c: c, node: node, log: logrus.New(), now: func() time.Time { return clock }}
	req := reconcile.Request{NamespacedName: client.ObjectKeyFromObject(tr)}
	res, err := trig.Reconcile(ctx, req)
	must(t, err)
	if res.RequeueAfter <= 0 || res.RequeueAfter > time.Minute+time.Second {
		t.Fatalf("requeue after %v, want about a minute", res.RequeueAfter)
	}
	clock = clock.Add(2 * time.Minute)
	_, err = trig.Reconcile(ctx, req)
	must(t, err)
	var got v1.PodSnapshotManualTrigger
	must(t, c.Get(ctx, req.NamespacedName, &got))
	if cond := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionTriggered); cond == nil || cond.Reason != v1.ReasonFailed || !strings.Contains(cond.Message, "no outcome reported") {
		t.Fatalf("Triggered = %+v", cond)
	}
}
