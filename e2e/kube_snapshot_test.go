package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/agent"
	"github.com/podsnapshot/podsnapshot/storage"
)

// counterScript is the guide's counter as a shell loop: it counts, asks for a
// checkpoint at 3 (the guide's Python counter does at 20), prints the result, counts on.
// A restored copy prints "checkpoint result: restore" and goes on from 4.
const counterScript = `i=0
while [ $i -lt 3 ]; do i=$((i+1)); echo "count $i"; sleep 0.2; done
if (exec 3<>/proc/gvisor/checkpoint) 2>/dev/null; then exec 3<>/proc/gvisor/checkpoint; echo 1 >&3; read -r r <&3; exec 3>&-; else r=error; fi
echo "checkpoint result: ${r:-error}"
while :; do i=$((i+1)); echo "count $i"; sleep 0.5; done`

// guideStorageConfig and guidePolicy are the GKE guide's storage config and policy as
// written there (v1alpha1), with a local store in place of the bucket.
func guideStorageConfig(storePath string) string {
	return `apiVersion: podsnapshot.gke.io/v1alpha1
kind: PodSnapshotStorageConfig
metadata:
  name: example-pod-snapshot-storage-config
spec:
  snapshotStorageConfig:
    local:
      path: "` + storePath + `"
`
}

const guidePolicy = `apiVersion: podsnapshot.gke.io/v1alpha1
kind: PodSnapshotPolicy
metadata:
  name: example-pod-snapshot-policy
  namespace: test
spec:
  storageConfigName: example-pod-snapshot-storage-config
  selector:
    matchLabels:
      app: my-app
  triggerConfig:
    type: workload
    postCheckpoint: resume
`

var uuidRE = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)

// TestKubeWorkloadSnapshotAndRestore follows the GKE guide on a real cluster: the guide's
// manifests apply (v1alpha1) and bad ones are refused naming the field; the policy
// reaches the node through the agent; the counter pod's PodSnapshot goes
// AwaitingCheckpoint -> AllSnapshotsAvailable with the checkpoint event; the pod created
// again restores (event, PodRestored, lastAccessTime) and counts on; a pod whose spec
// differs starts cold with an event saying why; `kubectl delete podsnapshot` deletes the
// files and the next pod starts cold; deleting the policy stops snapshots; the agent's
// and controller's metrics say what happened.
func TestKubeWorkloadSnapshotAndRestore(t *testing.T) {
	k := newInstalledKubeEnv(t, localStore)
	storePath := strings.TrimPrefix(k.storeURL, "file://")

	// 1. Bad objects are refused by the API server, naming the field.
	for _, bad := range []struct{ yaml, field string }{
		{strings.Replace(guidePolicy, "type: workload", "type: sometimes", 1), "spec.triggerConfig.type"},
		{strings.Replace(guidePolicy, "postCheckpoint: resume", "postCheckpoint: pause", 1), "spec.triggerConfig.postCheckpoint"},
		{strings.Replace(guidePolicy, "    postCheckpoint: resume\n", "    postCheckpoint: resume\n  retentionConfig:\n    lastAccessTimeout: 7days\n", 1), "spec.retentionConfig.lastAccessTimeout"},
		{strings.Replace(guidePolicy, "  triggerConfig:\n", "  snapshotScope: everything\n  triggerConfig:\n", 1), "spec.snapshotScope"},
		{strings.Replace(guidePolicy, "    matchLabels:\n", "    matchExpressions: [{key: tier, operator: Like, values: [a]}]\n    matchLabels:\n", 1), "selector operators are In, NotIn, Exists and DoesNotExist"},
		{strings.Replace(guidePolicy, "    matchLabels:\n", "    matchExpressions: [{key: tier, operator: In}]\n    matchLabels:\n", 1), "In and NotIn need values"},
		{strings.Replace(guideStorageConfig(storePath), "    local:\n", "    gcs: {bucket: b1}\n    local:\n", 1), "spec.snapshotStorageConfig"},
		{strings.Replace(guideStorageConfig(storePath), `path: "`+storePath+`"`, `path: "relative/dir"`, 1), "spec.snapshotStorageConfig.local.path"},
	} {
		out, err := k.kube.KubectlInput(bad.yaml, "apply", "-f", "-")
		if err == nil || !strings.Contains(err.Error()+out, bad.field) {
			t.Fatalf("kubectl apply of a bad object: err=%v out=%q; want an error naming %s", err, out, bad.field)
		}
	}
	if out := k.jsonpath("podsnapshotpolicies,podsnapshotstorageconfigs", "-A", "-o", "name"); out != "" {
		t.Fatalf("a refused apply left objects: %q", out)
	}
	// Valid operators pass the same rules.
	ok := strings.Replace(guidePolicy, "    matchLabels:\n", "    matchExpressions: [{key: tier, operator: In, values: [a]}, {key: canary, operator: DoesNotExist}]\n    matchLabels:\n", 1)
	if out, err := k.kube.KubectlInput(ok, "apply", "--dry-run=server", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply --dry-run=server of a policy with valid selector operators: %v\n%s", err, out)
	}

	// 2. The guide's manifests apply unchanged; the policy is on the node within seconds.
	begin := time.Now()
	k.apply(guideStorageConfig(storePath) + "---\n" + guidePolicy)
	mirror := filepath.Join(k.policyDir, agent.NamespaceFile("test"))
	harness.Eventually(t, 15*time.Second, "the policy mirrored into the policy directory", func() bool {
		b, _ := os.ReadFile(mirror)
		return strings.Contains(string(b), "example-pod-snapshot-policy")
	})
	t.Logf("policy applied with kubectl reached the node's policy_dir in %.2fs", time.Since(begin).Seconds())

	// 3. The counter pod: AwaitingCheckpoint, then AllSnapshotsAvailable and the event.
	labels := map[string]string{"app": "my-app"}
	k.apply(k.kubePod("counter", "test", labels, counterScript))
	var uuid string
	harness.Eventually(t, 60*time.Second, "a PodSnapshot for the counter pod", func() bool {
		uuid = uuidRE.FindString(k.jsonpath("podsnapshots", "-n", "test", "-o", "name"))
		return uuid != ""
	})
	harness.Eventually(t, 90*time.Second, "PodSnapshot AllSnapshotsAvailable", func() bool {
		return k.jsonpath("podsnapshot", "-n", "test", uuid, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].reason}`) == "AllSnapshotsAvailable"
	})
	k.waitEvent("test", "counter", "Successfully checkpointed the pod to PodSnapshot test/"+uuid, 30*time.Second)
	table := k.kubectl("get", "podsnapshots", "-n", "test")
	if !regexp.MustCompile(`(?m)^NAME\s+STATUS\s+POLICY\s+AGE\s*$`).MatchString(table) ||
		!regexp.MustCompile(`(?m)^`+uuid+`\s+AllSnapshotsAvailable\s+example-pod-snapshot-policy\s+\S+\s*$`).MatchString(table) {
		t.Fatalf("kubectl get podsnapshots:\n%s", table)
	}
	t.Logf("kubectl get podsnapshots -n test:\n%s", table)
	if got := k.jsonpath("podsnapshot", "-n", "test", uuid, "-o", `jsonpath={.status.conditions[?(@.type=="Checkpoint")].reason}`); got != "Succeeded" {
		t.Fatalf("Checkpoint condition reason %q, want Succeeded", got)
	}
	if p := k.jsonpath("podsnapshot", "-n", "test", uuid, "-o", "jsonpath={.status.storagePath}"); p != k.storeURL+"/test/example-pod-snapshot-policy/"+uuid {
		t.Fatalf("storagePath %q", p)
	}
	if s := k.jsonpath("podsnapshot", "-n", "test", uuid, "-o", "jsonpath={.status.snapshotScope}"); s != "whole-pod" {
		t.Fatalf("snapshotScope %q", s)
	}
	harness.Eventually(t, 30*time.Second, "the pod's log shows the checkpoint result", func() bool {
		out, _ := k.kube.Kubectl("-n", "test", "logs", "counter")
		return strings.Contains(out, "checkpoint result: resume")
	})

	// 4. Delete the pod, create it again: restored, event, PodRestored, lastAccessTime,
	// and the log continues from the saved count.
	k.kubectl("-n", "test", "delete", "pod", "counter", "--wait=true", "--timeout=60s")
	k.apply(k.kubePod("counter", "test", labels, counterScript))
	k.waitReady("test", "counter", 90*time.Second)
	k.waitEvent("test", "counter", "Successfully restored the pod from PodSnapshot test/"+uuid, 30*time.Second)
	harness.Eventually(t, 30*time.Second, "PodRestored condition", func() bool {
		return k.jsonpath("pod", "-n", "test", "counter", "-o", `jsonpath={.status.conditions[?(@.type=="PodRestored")].status}`) == "True"
	})
	if msg := k.jsonpath("pod", "-n", "test", "counter", "-o", `jsonpath={.status.conditions[?(@.type=="PodRestored")].message}`); !strings.Contains(msg, "test/"+uuid) {
		t.Fatalf("PodRestored message %q does not name the snapshot", msg)
	}
	harness.Eventually(t, 30*time.Second, "lastAccessTime set", func() bool {
		return k.jsonpath("podsnapshot", "-n", "test", uuid, "-o", "jsonpath={.status.lastAccessTime}") != ""
	})
	harness.Eventually(t, 30*time.Second, "the restored pod's log continues from the saved count", func() bool {
		out, _ := k.kube.Kubectl("-n", "test", "logs", "counter")
		return strings.Contains(out, "checkpoint result: restore") && strings.Contains(out, "count 5") && !strings.Contains(out, "count 1\n")
	})

	// 5. A pod of the policy whose spec differs starts cold, with an event saying why.
	k.apply(k.kubePod("other", "test", labels, "echo other; exec sleep 3600"))
	// Its sandbox matches the snapshot's (same labels, same pause container), so the
	// restore waits for its container, which differs.
	msgs := k.waitEvent("test", "other", "Started the pod without a snapshot (SpecDiffers): container main differs", 60*time.Second)
	t.Logf("events of the differing pod: %s", msgs)
	k.kubectl("-n", "test", "delete", "pod", "other", "--wait=true", "--timeout=60s")

	// 6. Metrics: a scrape of the agent and of the controller.
	m := k.agentMetrics()
	for _, want := range []string{`podsnapshot_checkpoints_total{result="committed"} 1`, `podsnapshot_restores_total{source=`,
		`podsnapshot_cold_starts_total{reason="NoSnapshot"}`, "podsnapshot_restore_duration_seconds_count 1", "podsnapshot_upload_duration_seconds_count 1"} {
		if !strings.Contains(m, want) {
			t.Errorf("agent metrics lack %q", want)
		}
	}
	if m := scrape(t, k.controllerMetrics()); !strings.Contains(m, `controller_runtime_reconcile_total{controller="podsnapshot-deletion"`) {
		t.Errorf("controller metrics lack its reconcile counts")
	}

	// 7. kubectl delete podsnapshot removes its files; the next pod starts cold.
	k.kubectl("-n", "test", "delete", "pod", "counter", "--wait=true", "--timeout=60s")
	k.kubectl("-n", "test", "delete", "podsnapshot", uuid, "--wait=true", "--timeout=60s")
	if _, err := k.repo.Get(t.Context(), "test", "example-pod-snapshot-policy", uuid); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("snapshot %s still in the store after kubectl delete podsnapshot: %v", uuid, err)
	}
	if _, err := os.Stat(filepath.Join(k.hostPath(storePath), "test", "example-pod-snapshot-policy", uuid)); err == nil {
		t.Fatalf("directory of snapshot %s left in the local store", uuid)
	}
	k.apply(k.kubePod("counter", "test", labels, counterScript))
	k.waitEvent("test", "counter", "Started the pod without a snapshot (NoSnapshot)", 60*time.Second)
	k.kubectl("-n", "test", "delete", "pod", "counter", "--wait=true", "--timeout=60s")

	// 8. Deleting the policy stops snapshots and restores on the node within seconds.
	k.kubectl("-n", "test", "delete", "podsnapshotpolicy", "example-pod-snapshot-policy")
	harness.Eventually(t, 15*time.Second, "the policy gone from the policy directory", func() bool {
		b, _ := os.ReadFile(mirror)
		return !strings.Contains(string(b), "example-pod-snapshot-policy")
	})
	before := k.jsonpath("podsnapshots", "-n", "test", "-o", "name")
	k.apply(k.kubePod("plain", "test", labels, counterScript))
	k.waitReady("test", "plain", 90*time.Second)
	if line := k.decision(k.sandboxID("test", "plain")); !strings.Contains(line, "plain runsc") {
		t.Fatalf("pod after the policy's deletion: %q", line)
	}
	harness.Eventually(t, 30*time.Second, "the workload's checkpoint write refused", func() bool {
		out, _ := k.kube.Kubectl("-n", "test", "logs", "plain")
		return strings.Contains(out, "checkpoint result: error")
	})
	if after := k.jsonpath("podsnapshots", "-n", "test", "-o", "name"); after != before {
		t.Fatalf("PodSnapshots changed without a policy: %q -> %q", before, after)
	}
	if ev := k.events("test", "plain"); ev != "" {
		t.Fatalf("events on a pod without policy: %q", ev)
	}
}
