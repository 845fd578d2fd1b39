package repo

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/retention"
	"github.com/podsnapshot/podsnapshot/checkpoint/snapkey"
)

func TestApplyRetention(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	key := strings.Repeat("a", 64)
	group := func(v string) []snapkey.GroupLabel {
		return []snapkey.GroupLabel{{Label: "app", Value: v, Present: true}}
	}
	put := func(policy string, created time.Time, g string, state manifest.State) *manifest.Manifest {
		t.Helper()
		m := manifest.New("ns", policy, key, here, created)
		m.GroupLabels = group(g)
		if err := r.Commit(ctx, m, imageDir(t, 1)); err != nil {
			t.Fatal(err)
		}
		if state == manifest.StateFailed {
			if err := r.MarkFailed(ctx, m, "corrupt"); err != nil {
				t.Fatal(err)
			}
		}
		return m
	}
	oldA := put("pol", t0, "a", manifest.StateCommitted)
	midA := put("pol", t0.Add(time.Hour), "a", manifest.StateCommitted)
	newA := put("pol", t0.Add(2*time.Hour), "a", manifest.StateCommitted)
	onlyB := put("pol", t0.Add(time.Hour), "b", manifest.StateCommitted)
	failedA := put("pol", t0, "a", manifest.StateFailed)       // Failed: not retention's
	otherPol := put("other", t0, "a", manifest.StateCommitted) // another policy

	now := t0.Add(3 * time.Hour)
	rules := retention.Rules{MaxPerGroup: 1}
	ms, _, err := r.List(ctx, "ns")
	if err != nil {
		t.Fatal(err)
	}
	plan := PlanRetention(ms, "ns", "pol", rules, now)
	if got := ids(plan); got != ids([]retention.Deletion{{ID: oldA.UUID}, {ID: midA.UUID}}) {
		t.Fatalf("plan = %v; want the two oldest of group a", plan)
	}
	if len(PlanRetention(ms, "ns", "nothing", rules, now)) != 0 {
		t.Fatal("a policy without snapshots has a plan")
	}

	// No rules: nothing listed, nothing deleted.
	if d, err := r.ApplyRetention(ctx, "ns", "pol", retention.Rules{}, now); err != nil || len(d) != 0 {
		t.Fatalf("ApplyRetention without rules = %v, %v", d, err)
	}
	deleted, err := r.ApplyRetention(ctx, "ns", "pol", rules, now)
	if err != nil || ids(deleted) != ids(plan) || !strings.Contains(deleted[0].Reason, "maxSnapshotCountPerGroup 1") {
		t.Fatalf("ApplyRetention = %v, %v; want %v", deleted, err, plan)
	}
	left, _, _ := r.List(ctx, "ns")
	if got, want := uuids(left), uuids([]*manifest.Manifest{failedA, otherPol, onlyB, newA}); got != want {
		t.Fatalf("left after retention: %s; want %s", got, want)
	}

	// lastAccessTimeout: a snapshot restored from recently stays, an unused one goes.
	r.Now = func() time.Time { return now }
	if err := r.Touch(ctx, reread(t, r, newA)); err != nil {
		t.Fatal(err)
	}
	deleted, err = r.ApplyRetention(ctx, "ns", "pol", retention.Rules{LastAccessTimeout: 90 * time.Minute}, now)
	if err != nil || ids(deleted) != onlyB.UUID || !strings.Contains(deleted[0].Reason, "lastAccessTimeout") {
		t.Fatalf("ApplyRetention by lastAccessTimeout = %v, %v; want %s", deleted, err, onlyB.UUID)
	}
}

func ids(ds []retention.Deletion) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.ID)
	}
	return strings.Join(s, " ")
}

// uuids is the sorted UUIDs of ms.
func uuids(ms []*manifest.Manifest) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.UUID)
	}
	sort.Strings(s)
	return strings.Join(s, " ")
}
