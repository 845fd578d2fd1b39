package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/agent"
	"github.com/podsnapshot/podsnapshot/storage"
)

// gcsManifests: a storage config on fake-gcs-server's bucket and a manual policy.
const gcsManifests = `apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotStorageConfig
metadata:
  name: gcs-config
spec:
  snapshotStorageConfig:
    gcs:
      bucket: snapshots
      path: pods
---
apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotPolicy
metadata:
  name: manual-policy
  namespace: test
spec:
  storageConfigName: gcs-config
  selector:
    matchLabels:
      app: batch
  triggerConfig:
    type: manual
`

func trigger(name, pod string) string {
	return `apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotManualTrigger
metadata:
  name: ` + name + `
  namespace: test
spec:
  targetPod: ` + pod + "\n"
}

// TestKubeManualTrigger (Cloud Storage on fake-gcs-server): a PodSnapshotManualTrigger
// on a manual-policy pod takes a snapshot (Triggered True/Complete, snapshotCreated, the
// PodSnapshot Ready, the checkpoint event); a trigger naming a missing pod fails with a
// message; one naming a pod no manual policy matches fails; `kubectl delete
// podsnapshot` deletes the snapshot's objects from the bucket (the controller's job).
func TestKubeManualTrigger(t *testing.T) {
	k := newInstalledKubeEnv(t, gcsStore)
	k.apply(gcsManifests)
	harness.Eventually(t, 15*time.Second, "the manual policy on the node", func() bool {
		b, _ := os.ReadFile(filepath.Join(k.policyDir, agent.NamespaceFile("test")))
		return strings.Contains(string(b), "manual-policy")
	})
	k.apply(k.kubePod("batch", "test", map[string]string{"app": "batch"}, `i=0; while :; do i=$((i+1)); echo "batch $i"; sleep 0.5; done`))
	k.apply(k.kubePod("loner", "test", map[string]string{"app": "loner"}, "exec sleep 3600"))
	k.waitReady("test", "batch", 90*time.Second)
	k.waitReady("test", "loner", 90*time.Second)

	k.apply(trigger("trigger-1", "batch") + "---\n" + trigger("trigger-missing", "nobody") + "---\n" + trigger("trigger-loner", "loner"))
	cond := func(name, field string) string {
		return k.jsonpath("podsnapshotmanualtrigger", "-n", "test", name, "-o", `jsonpath={.status.conditions[?(@.type=="Triggered")].`+field+`}`)
	}
	harness.Eventually(t, 90*time.Second, "trigger-1 Complete", func() bool { return cond("trigger-1", "reason") == "Complete" })
	uuid := k.jsonpath("podsnapshotmanualtrigger", "-n", "test", "trigger-1", "-o", "jsonpath={.status.snapshotCreated.name}")
	if !uuidRE.MatchString(uuid) {
		t.Fatalf("trigger-1 snapshotCreated %q", uuid)
	}
	if cond("trigger-1", "status") != "True" {
		t.Fatalf("trigger-1 Triggered status %q", cond("trigger-1", "status"))
	}
	harness.Eventually(t, 30*time.Second, "the PodSnapshot Ready", func() bool {
		return k.jsonpath("podsnapshot", "-n", "test", uuid, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].reason}`) == "AllSnapshotsAvailable"
	})
	if p := k.jsonpath("podsnapshot", "-n", "test", uuid, "-o", "jsonpath={.status.storagePath}"); p != "gs://snapshots/pods/test/manual-policy/"+uuid {
		t.Fatalf("storagePath %q", p)
	}
	k.waitEvent("test", "batch", "Successfully checkpointed the pod to PodSnapshot test/"+uuid, 30*time.Second)
	if _, err := k.repo.Get(t.Context(), "test", "manual-policy", uuid); err != nil {
		t.Fatalf("snapshot %s not in the bucket: %v", uuid, err)
	}

	harness.Eventually(t, 30*time.Second, "trigger-missing Failed", func() bool { return cond("trigger-missing", "reason") == "Failed" })
	if msg := cond("trigger-missing", "message"); msg != "pod test/nobody not found" {
		t.Fatalf("trigger-missing message %q", msg)
	}
	harness.Eventually(t, 30*time.Second, "trigger-loner Failed", func() bool { return cond("trigger-loner", "reason") == "Failed" })
	if msg := cond("trigger-loner", "message"); !strings.Contains(msg, "no PodSnapshotPolicy matches pod test/loner") {
		t.Fatalf("trigger-loner message %q", msg)
	}

	// The pod keeps running after a manual checkpoint (postCheckpoint resume).
	if phase := k.jsonpath("pod", "-n", "test", "batch", "-o", "jsonpath={.status.phase}"); phase != "Running" {
		t.Fatalf("pod phase after the checkpoint: %q", phase)
	}
	k.kubectl("-n", "test", "delete", "podsnapshot", uuid, "--wait=true", "--timeout=60s")
	if _, err := k.repo.Get(t.Context(), "test", "manual-policy", uuid); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("snapshot %s still in the bucket after kubectl delete podsnapshot: %v", uuid, err)
	}
	objs, err := k.store.List(t.Context(), "test/manual-policy/"+uuid+"/")
	must(t, err)
	if len(objs) != 0 {
		t.Fatalf("objects of the deleted snapshot left in the bucket: %v", objs)
	}
}

// TestKubeAPIServerDown: with the API server stopped and the agent killed, a pod's
// checkpoint still happens and commits on the node, and when the pod's sandbox is
// stopped the kubelet's new one is restored from it; the reports wait in the spool; when
// the API server and the agent are back, the PodSnapshot, the events and PodRestored
// appear and the spool empties. Nothing is lost.
func TestKubeAPIServerDown(t *testing.T) {
	k := newInstalledKubeEnv(t, localStore)
	storePath := strings.TrimPrefix(k.storeURL, "file://")
	k.apply(guideStorageConfig(storePath) + "---\n" + guidePolicy)
	harness.Eventually(t, 15*time.Second, "the policy on the node", func() bool {
		b, _ := os.ReadFile(filepath.Join(k.policyDir, agent.NamespaceFile("test")))
		return strings.Contains(string(b), "example-pod-snapshot-policy")
	})
	// The counter, but it waits 15 s before asking for its checkpoint.
	k.apply(k.kubePod("late", "test", map[string]string{"app": "my-app"}, "sleep 15\n"+counterScript))
	k.waitReady("test", "late", 90*time.Second)
	begin := time.Now()
	k.killAgent()
	must(t, k.kube.StopAPIServer())
	t.Logf("agent killed and API server stopped %.1fs after the pod was Ready", time.Since(begin).Seconds())

	var uuid string
	harness.Eventually(t, 90*time.Second, "the checkpoint committed in the store while the API server is down", func() bool {
		ms, _, err := k.repo.List(t.Context(), "test")
		if err != nil || len(ms) == 0 {
			return false
		}
		uuid = ms[0].UUID
		return true
	})
	spool := filepath.Join(k.workDir, ".reports")
	entries, err := os.ReadDir(spool)
	must(t, err)
	if len(entries) < 2 {
		t.Fatalf("spool %s holds %d reports while the agent is down, want the cold start and the checkpoint's", spool, len(entries))
	}
	t.Logf("snapshot %s committed with the API server down; %d reports wait in the spool", uuid, len(entries))

	// The node restores with the API server down too: the pod's sandbox stopped, the
	// kubelet makes a new one from the pod it knows, and the shim restores it.
	sb := k.sandboxID("test", "late")
	k.cd.MustCrictl(t, "stopp", sb)
	harness.Eventually(t, 90*time.Second, "a Restored report in the spool while the API server is down", func() bool {
		entries, _ := os.ReadDir(spool)
		for _, e := range entries {
			if b, err := os.ReadFile(filepath.Join(spool, e.Name())); err == nil && strings.Contains(string(b), `"kind":"Restored"`) {
				return true
			}
		}
		return false
	})
	t.Logf("sandbox %s stopped; the kubelet's new sandbox was restored with the API server down", sb[:12])

	must(t, k.kube.StartAPIServer())
	k.restartAgent()
	harness.Eventually(t, 60*time.Second, "the PodSnapshot Ready after the API server returned", func() bool {
		return k.jsonpath("podsnapshot", "-n", "test", uuid, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].reason}`) == "AllSnapshotsAvailable"
	})
	k.waitEvent("test", "late", "Successfully checkpointed the pod to PodSnapshot test/"+uuid, 30*time.Second)
	k.waitEvent("test", "late", "Started the pod without a snapshot (NoSnapshot)", 30*time.Second)
	k.waitEvent("test", "late", "Successfully restored the pod from PodSnapshot test/"+uuid, 30*time.Second)
	harness.Eventually(t, 30*time.Second, "PodRestored on the pod", func() bool {
		return k.jsonpath("pod", "-n", "test", "late", "-o", `jsonpath={.status.conditions[?(@.type=="PodRestored")].status}`) == "True"
	})
	harness.Eventually(t, 30*time.Second, "the spool empty", func() bool {
		entries, _ := os.ReadDir(spool)
		n := 0
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), ".") {
				n++
			}
		}
		return n == 0
	})
	if n := strings.Count(k.events("test", "late"), "Successfully checkpointed"); n != 1 {
		t.Fatalf("%d checkpoint events, want exactly 1", n)
	}
}

// guideGCSStorageConfig is the guide's storage config on the bucket "snapshots".
const guideGCSStorageConfig = `apiVersion: podsnapshot.gke.io/v1alpha1
kind: PodSnapshotStorageConfig
metadata:
  name: example-pod-snapshot-storage-config
spec:
  snapshotStorageConfig:
    gcs:
      bucket: snapshots
      path: pods
`

// TestKubeRetention (Cloud Storage on fake-gcs-server): maxSnapshotCountPerGroup 2 keeps the newest two of
// three manual snapshots (the shim deletes the oldest's files after the third commit and
// the agent its PodSnapshot); then a lastAccessTimeout of 1min applied with kubectl
// makes the controller delete the unused snapshots' objects and, through the finalizer,
// their files.
func TestKubeRetention(t *testing.T) {
	k := newInstalledKubeEnv(t, gcsStore)
	policy := func(retention string) string {
		return guideGCSStorageConfig + `---
apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotPolicy
metadata:
  name: batch-policy
  namespace: test
spec:
  storageConfigName: example-pod-snapshot-storage-config
  selector:
    matchLabels:
      app: batch
  triggerConfig:
    type: manual
  snapshotGroupingRules:
    groupRetentionPolicy:
      maxSnapshotCountPerGroup: 2
` + retention
	}
	k.apply(policy(""))
	harness.Eventually(t, 15*time.Second, "the policy on the node", func() bool {
		b, _ := os.ReadFile(filepath.Join(k.policyDir, agent.NamespaceFile("test")))
		return strings.Contains(string(b), "batch-policy")
	})
	k.apply(k.kubePod("batch", "test", map[string]string{"app": "batch"}, `i=0; while :; do i=$((i+1)); echo "batch $i"; sleep 0.5; done`))
	k.waitReady("test", "batch", 90*time.Second)
	var uuids []string
	for _, name := range []string{"t1", "t2", "t3"} {
		k.apply(trigger(name, "batch"))
		harness.Eventually(t, 90*time.Second, name+" Complete", func() bool {
			return k.jsonpath("podsnapshotmanualtrigger", "-n", "test", name, "-o", `jsonpath={.status.conditions[?(@.type=="Triggered")].reason}`) == "Complete"
		})
		uuids = append(uuids, k.jsonpath("podsnapshotmanualtrigger", "-n", "test", name, "-o", "jsonpath={.status.snapshotCreated.name}"))
	}
	names := func() string {
		return k.jsonpath("podsnapshots", "-n", "test", "-o", `jsonpath={range .items[*]}{.metadata.name}{" "}{end}`)
	}
	harness.Eventually(t, 30*time.Second, "only the newest two PodSnapshots left", func() bool {
		got := names()
		return !strings.Contains(got, uuids[0]) && strings.Contains(got, uuids[1]) && strings.Contains(got, uuids[2])
	})
	ms, _, err := k.repo.List(t.Context(), "test")
	must(t, err)
	if len(ms) != 2 {
		t.Fatalf("store holds %d snapshots after the group limit, want 2", len(ms))
	}

	k.apply(policy("  retentionConfig:\n    lastAccessTimeout: 1min\n"))
	begin := time.Now()
	harness.Eventually(t, 150*time.Second, "unused snapshots deleted after lastAccessTimeout 1min", func() bool {
		return strings.TrimSpace(names()) == ""
	})
	t.Logf("lastAccessTimeout 1min: the objects went %.0fs after the policy changed", time.Since(begin).Seconds())
	ms, _, err = k.repo.List(t.Context(), "test")
	must(t, err)
	if len(ms) != 0 {
		t.Fatalf("store holds %d snapshots after lastAccessTimeout, want 0", len(ms))
	}
}
