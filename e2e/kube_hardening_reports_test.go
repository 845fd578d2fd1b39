package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/report"
)

// hardenReports (issue 27 item 3) checks on an installed cluster that one namespace's
// undeliverable reports do not hold up another's: it holds namespace
// harden-rep-held in Terminating (a ConfigMap with a finalizer of the test's), writes
// into the node's report spool five CheckpointStarted reports of that namespace and a
// ColdStart of a namespace that does not exist, then a CheckpointCommitted of a running
// pod of namespace harden-rep-other. The other namespace's PodSnapshot must be Ready
// (AllSnapshotsAvailable, with the commit event) within 10 s (before the fix: about a
// minute per refused report, six minutes), and the six refused reports set aside as
// .refused-* within 10 s (no one-minute window for a terminating or missing namespace).
// It deletes what it created (the set-aside files too).
func (k *kubeEnv) hardenReports() {
	t := k.t
	t.Helper()
	const held, other, absent = "harden-rep-held", "harden-rep-other", "harden-rep-absent"
	k.kubectl("create", "namespace", held)
	k.kubectl("create", "namespace", other)
	defer func() {
		k.kube.Kubectl("-n", held, "patch", "configmap", "hold", "--type=merge", "-p", `{"metadata":{"finalizers":null}}`)
		k.kube.Kubectl("delete", "namespace", other, "--wait=false")
		for _, ns := range []string{held, other} {
			if _, err := k.kube.Kubectl("wait", "--for=delete", "namespace/"+ns, "--timeout=60s"); err != nil {
				t.Errorf("namespace %s not deleted: %v", ns, err)
			}
		}
	}()
	k.apply(fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata:
  name: hold
  namespace: %s
  finalizers: ["podsnapshot.test/hold"]
`, held))
	k.kubectl("delete", "namespace", held, "--wait=false")
	harness.Eventually(t, 15*time.Second, "namespace "+held+" Terminating", func() bool {
		return k.jsonpath("namespace", held, "-o", "jsonpath={.status.phase}") == "Terminating"
	})
	// A pod of the other namespace (no policy: plain runsc), so that the report is
	// about a real pod of this node.
	k.apply(k.kubePod("counter", other, nil, "exec sleep 3600"))
	k.waitReady(other, "counter", 90*time.Second)
	uid := k.jsonpath("pod", "-n", other, "counter", "-o", "jsonpath={.metadata.uid}")

	spool := report.Spool{Dir: filepath.Join(k.workDir, ".reports")}
	at := time.Now()
	for i := 0; i < 5; i++ {
		must(t, spool.Write(report.Report{Time: at.Add(time.Duration(i) * time.Millisecond), Kind: report.CheckpointStarted,
			Pod: report.Pod{Namespace: held, Name: fmt.Sprintf("p%d", i), UID: fmt.Sprintf("uid-held-%d", i)}, SandboxID: "sb",
			Policy: "p", Snapshot: fmt.Sprintf("00000000-0000-4000-8000-00000000000%d", i)}))
	}
	must(t, spool.Write(report.Report{Time: at.Add(5 * time.Millisecond), Kind: report.ColdStart,
		Pod: report.Pod{Namespace: absent, Name: "p", UID: "uid-absent"}, SandboxID: "sb", Policy: "p",
		Reason: report.ReasonNoSnapshot, Message: "cold start: no snapshot"}))
	const snap = "0b8f2c7e-6f1a-4d0e-9c2b-1d3e5f7a9b0c"
	must(t, spool.Write(report.Report{Time: at.Add(6 * time.Millisecond), Kind: report.CheckpointCommitted,
		Pod: report.Pod{Namespace: other, Name: "counter", UID: uid}, SandboxID: "sb", Policy: "p", Snapshot: snap}))
	begin := time.Now()

	harness.Eventually(t, 10*time.Second, "PodSnapshot "+other+"/"+snap+" Ready behind the refused reports", func() bool {
		return k.jsonpath("podsnapshot", "-n", other, snap, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].reason}`) == "AllSnapshotsAvailable"
	})
	t.Logf("the other namespace's CheckpointCommitted delivered %.1fs after it was written", time.Since(begin).Seconds())
	k.waitEvent(other, "counter", "Successfully checkpointed the pod to PodSnapshot "+other+"/"+snap, 10*time.Second)

	var asideFiles []string
	harness.Eventually(t, 10*time.Second, "the six refused reports set aside", func() bool {
		asideFiles = nil
		des, _ := os.ReadDir(spool.Dir)
		for _, de := range des {
			b, err := os.ReadFile(filepath.Join(spool.Dir, de.Name()))
			if err != nil || !(strings.Contains(string(b), `"namespace":"`+held+`"`) || strings.Contains(string(b), `"namespace":"`+absent+`"`)) {
				continue
			}
			if !strings.HasPrefix(de.Name(), ".refused-") {
				return false // still waiting in the spool
			}
			asideFiles = append(asideFiles, de.Name())
		}
		return len(asideFiles) == 6
	})
	t.Logf("refused reports set aside %.1fs after they were written", time.Since(begin).Seconds())
	for _, n := range asideFiles {
		os.Remove(filepath.Join(spool.Dir, n))
	}
}
