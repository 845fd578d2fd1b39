package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/policy"
)

func localConfig(name string) *v1.PodSnapshotStorageConfig {
	return &v1.PodSnapshotStorageConfig{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1.PodSnapshotStorageConfigSpec{SnapshotStorageConfig: v1.SnapshotStorageConfig{Local: &v1.LocalStorage{Path: "/var/lib/podsnapshot/" + name}}}}
}

// ordinaryPolicy is a policy as people write them: two labels, retention, grouping.
func ordinaryPolicy(ns, name string) *v1.PodSnapshotPolicy {
	return &v1.PodSnapshotPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("0b8f2c7e-6f1a-4d0e-9c2b-" + fmt.Sprintf("%012d", len(ns)*100000+len(name))),
			CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)), Generation: 1},
		Spec: v1.PodSnapshotPolicySpec{
			Selector:          &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": name, "app.kubernetes.io/component": "server"}},
			StorageConfigName: "store",
			TriggerConfig:     v1.TriggerConfig{Type: v1.TriggerWorkload, PostCheckpoint: v1.PostCheckpointResume},
			RetentionConfig:   &v1.RetentionConfig{LastAccessTimeout: "7d"},
			SnapshotGroupingRules: &v1.SnapshotGroupingRules{GroupByLabelValue: &v1.GroupByLabelValue{Labels: []string{"app.kubernetes.io/version"}},
				GroupRetentionPolicy: &v1.GroupRetentionPolicy{MaxSnapshotCountPerGroup: 3}},
			SnapshotScope: v1.ScopeWholePod,
		}}
}

func newMirror(t *testing.T, c client.Client) *mirror {
	log := logrus.New()
	log.SetOutput(testWriter{t})
	return &mirror{c: c, dir: filepath.Join(t.TempDir(), "policies"), log: log}
}

func reconcileMirror(t *testing.T, m *mirror) {
	t.Helper()
	if _, err := m.Reconcile(context.Background(), mirrorKey); err != nil {
		t.Fatal(err)
	}
}

// matches says whether the node's loader, reading the mirror's directory, finds policy
// ns/name for a pod labelled for it.
func matches(set *policy.Set, ns, name string) bool {
	m := set.Match(ns, map[string]string{"app.kubernetes.io/name": name, "app.kubernetes.io/component": "server"})
	return m.Found() && m.Policy.Name == name
}

// Issue 27 item 1: one namespace's policy with a 1.1 MB selector (the fake client, like an
// API server before the CRD's bounds, takes it) made the one mirror file too large for
// the loader, and every node lost every policy. Now only that namespace's file is
// refused: it keeps its last good content, the other namespaces' files are written, the
// loader reads all of them without error, and a Warning Event on the policy names the
// cause, once.
func TestMirrorKeepsOneNamespacesMistakeItsOwn(t *testing.T) {
	ctx := context.Background()
	c := newFake(localConfig("store"), ordinaryPolicy("good", "web"), ordinaryPolicy("big", "api"))
	m := newMirror(t, c)
	reconcileMirror(t, m)
	if set := policy.Load(m.dir); len(set.Errors) > 0 || !matches(set, "good", "web") || !matches(set, "big", "api") {
		t.Fatalf("first mirror: errors %v, policies %d", set.Errors, len(set.Policies))
	}

	var api v1.PodSnapshotPolicy
	must(t, c.Get(ctx, client.ObjectKey{Namespace: "big", Name: "api"}, &api))
	api.Spec.Selector.MatchLabels["huge"] = strings.Repeat("x", 1_100_000)
	must(t, c.Update(ctx, &api))
	must(t, c.Create(ctx, ordinaryPolicy("good", "worker")))
	reconcileMirror(t, m)
	reconcileMirror(t, m) // the same refusal again: no second event

	set := policy.Load(m.dir)
	if len(set.Errors) > 0 {
		t.Errorf("loader errors: %v", set.Errors)
	}
	if !matches(set, "good", "worker") || !matches(set, "good", "web") {
		t.Errorf("namespace good lost its policies to namespace big's mistake: %d policies loaded", len(set.Policies))
	}
	if !matches(set, "big", "api") {
		t.Errorf("namespace big lost its last good policy")
	}
	var evs corev1.EventList
	must(t, c.List(ctx, &evs, client.InNamespace("big")))
	var got []string
	for _, e := range evs.Items {
		got = append(got, e.Type+" "+e.Reason+" "+e.InvolvedObject.Kind+" "+e.InvolvedObject.Name+": "+e.Message)
	}
	if len(got) != 1 || !strings.HasPrefix(got[0], "Warning PolicyNotMirrored PodSnapshotPolicy api: ") ||
		!strings.Contains(got[0], "kubernetes-ns-big.yaml: ") || !strings.Contains(got[0], " bytes, over the 1048576-byte limit") {
		t.Errorf("events in namespace big = %q; want one Warning PolicyNotMirrored on api naming the file, its size and the limit", got)
	}

	// The namespace's policies deleted: its file goes.
	must(t, c.Delete(ctx, &api))
	reconcileMirror(t, m)
	if set := policy.Load(m.dir); len(set.Errors) > 0 || matches(set, "big", "api") || !matches(set, "good", "worker") {
		t.Errorf("after deleting big/api: errors %v, big/api still matches: %v", set.Errors, matches(set, "big", "api"))
	}
	if _, err := os.Stat(filepath.Join(m.dir, "kubernetes-ns-big.yaml")); !os.IsNotExist(err) {
		t.Errorf("the file of a namespace without policies stays: %v", err)
	}
}

// Issue 27 item 1: about 2,500 ordinary policies of the cluster filled the one mirror
// file past the loader's limit. Spread over 50 namespaces they all load.
func TestMirrorManyPolicies(t *testing.T) {
	objs := []client.Object{localConfig("store")}
	for n := range 50 {
		for p := range 50 {
			objs = append(objs, ordinaryPolicy(fmt.Sprintf("team-%02d", n), fmt.Sprintf("service-%02d", p)))
		}
	}
	m := newMirror(t, newFake(objs...))
	reconcileMirror(t, m)
	set := policy.Load(m.dir)
	if len(set.Errors) > 0 || len(set.Policies) != 2500 {
		t.Fatalf("%d policies loaded, want 2500; errors: %v", len(set.Policies), set.Errors)
	}
	if !matches(set, "team-49", "service-49") {
		t.Error("team-49/service-49 does not match")
	}
}

// A namespace's new content that the loader would skip a document of (here a selector
// over the bounds of Validate) is refused too, and the Event names that policy; a
// hand-written file stays, the legacy kubernetes.yaml goes.
func TestMirrorRefusesInvalidPolicy(t *testing.T) {
	ctx := context.Background()
	c := newFake(localConfig("store"), ordinaryPolicy("team", "a"), ordinaryPolicy("team", "b"))
	m := newMirror(t, c)
	must(t, os.MkdirAll(m.dir, 0o755))
	must(t, os.WriteFile(filepath.Join(m.dir, legacyMirrorFile), []byte("# old\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(m.dir, "hand.yaml"), []byte("# mine\n"), 0o644))
	reconcileMirror(t, m)
	before, err := os.ReadFile(filepath.Join(m.dir, NamespaceFile("team")))
	must(t, err)

	var b v1.PodSnapshotPolicy
	must(t, c.Get(ctx, client.ObjectKey{Namespace: "team", Name: "b"}, &b))
	for i := range v1.MaxSelectorLabels {
		b.Spec.Selector.MatchLabels[fmt.Sprintf("l%d", i)] = "x"
	}
	must(t, c.Update(ctx, &b))
	reconcileMirror(t, m)
	after, err := os.ReadFile(filepath.Join(m.dir, NamespaceFile("team")))
	must(t, err)
	if string(after) != string(before) {
		t.Errorf("the namespace's file was replaced by content the loader skips a policy of")
	}
	var evs corev1.EventList
	must(t, c.List(ctx, &evs, client.InNamespace("team")))
	if len(evs.Items) != 1 || evs.Items[0].InvolvedObject.Name != "b" || evs.Items[0].Reason != ReasonPolicyNotMirrored ||
		!strings.Contains(evs.Items[0].Message, "spec.selector.matchLabels: Too many: 34: must have at most 32 items") {
		t.Errorf("events = %+v", evs.Items)
	}
	entries, _ := os.ReadDir(m.dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := "hand.yaml kubernetes-ns-team.yaml kubernetes-storageconfigs.yaml"; strings.Join(names, " ") != want {
		t.Errorf("policy directory holds %q, want %q", names, want)
	}
}
