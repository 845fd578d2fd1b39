package agent

import (
	"context"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/internal/kubeapi"
	"github.com/podsnapshot/podsnapshot/internal/report"
)

// TestReportsStayOnTheirNode: what the agents' admission policy (agent-node-policy.yaml)
// lets an agent do is all it tries: PodSnapshots it creates carry its node's label; a
// report about another node's PodSnapshot (a retention on this node deleted its files)
// marks it Failed instead of deleting it, and never re-points its node or storage path.
func TestReportsStayOnTheirNode(t *testing.T) {
	ctx := context.Background()
	other := &v1.PodSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: uuid, Finalizers: []string{kubeapi.Finalizer},
		Labels: map[string]string{v1.LabelNode: "node-b"}}, Spec: v1.PodSnapshotSpec{PolicyName: "counter-policy"}}
	c := newFake(pod("counter", "u1"), other)
	must(t, kubeapi.SetSnapshotStatus(ctx, c, "default", uuid, func(ps *v1.PodSnapshot) {
		ps.Status.NodeName, ps.Status.StoragePath = "node-b", "gs://b/default/counter-policy/"+uuid
	}))
	r, sp := newReporter(t, c)

	// A late commit report of this node about node-b's object: status identity unchanged.
	commit := rep(report.CheckpointCommitted, "counter", "u1")
	commit.StoragePath = "gs://elsewhere/default/counter-policy/" + uuid
	must(t, sp.Write(commit))
	r.drain(ctx)
	ps := getSnap(t, c)
	if ps.Status.NodeName != "node-b" || ps.Status.StoragePath != "gs://b/default/counter-policy/"+uuid {
		t.Fatalf("another node's PodSnapshot re-pointed: %+v", ps.Status)
	}

	// This node's retention deleted node-b's snapshot's files: Failed, not deleted.
	del := rep(report.SnapshotDeleted, "counter", "u1")
	del.Message = "maxSnapshotCountPerGroup 1"
	must(t, sp.Write(del))
	r.drain(ctx)
	ps = getSnap(t, c)
	c1 := meta.FindStatusCondition(ps.Status.Conditions, v1.ConditionReady)
	if ps.DeletionTimestamp != nil || c1 == nil || c1.Reason != v1.ReasonFailed || !strings.Contains(c1.Message, "retention of node "+node) {
		t.Fatalf("another node's PodSnapshot after this node's retention: deleting %v, Ready %+v", ps.DeletionTimestamp != nil, c1)
	}

	// This node's own snapshot: created with its label, and deleted after its retention.
	must(t, c.Delete(ctx, ps))
	must(t, kubeapi.RemoveFinalizer(ctx, c, getSnap(t, c)))
	cold := rep(report.ColdStart, "counter", "u1")
	cold.Reason = report.ReasonNoSnapshot
	must(t, sp.Write(cold))
	r.drain(ctx)
	ps = getSnap(t, c)
	if ps.Labels[v1.LabelNode] != node || ps.Status.NodeName != node {
		t.Fatalf("created PodSnapshot: labels %v, nodeName %q; want %s=%s", ps.Labels, ps.Status.NodeName, v1.LabelNode, node)
	}
	must(t, sp.Write(del))
	r.drain(ctx)
	var got v1.PodSnapshot
	err := c.Get(ctx, client.ObjectKey{Namespace: "default", Name: uuid}, &got)
	if err == nil && got.DeletionTimestamp == nil {
		t.Fatal("this node's PodSnapshot not deleted after its retention deleted the files")
	}
}
