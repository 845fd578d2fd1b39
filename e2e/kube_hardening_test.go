package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
)

// TestKubeHardening checks the control plane's limits (issue 27) on one installed
// single-node cluster (the shipped manifests, agent and controller as pods): each check
// is a kubeEnv method that cleans up after itself.
func TestKubeHardening(t *testing.T) {
	k := newInstalledKubeEnv(t, gcsStore)
	t.Run("AgentNode", func(t *testing.T) { k.withT(t).hardenAgentNode() })
	t.Run("Reports", func(t *testing.T) { k.withT(t).hardenReports() })
	t.Run("Mirror", func(t *testing.T) { k.withT(t).hardenMirror() })
	t.Run("StorageNamespaces", func(t *testing.T) { k.withT(t).hardenStorageNamespaces() })
	t.Run("AgentPrivileges", func(t *testing.T) { k.withT(t).hardenAgentPrivileges() })
	t.Run("Metrics", func(t *testing.T) { k.withT(t).hardenMetrics() })
}

// withT is k reporting to t (a subtest).
func (k *kubeEnv) withT(t *testing.T) *kubeEnv {
	c := *k
	e := *k.env
	e.t = t
	c.env = &e
	return &c
}

// hardenAgentNode: the agent's own credentials (a token bound to the agent's pod, as the
// one kubelet projects into it) may write what concerns its node only
// (deploy/kubernetes/agent-node-policy.yaml). Node "node-b" is a Node object without a
// kubelet, whose pod, PodSnapshot and trigger the agent of the real node must not touch;
// a local-store PodSnapshot of node-b being deleted goes once node-b is deleted.
func (k *kubeEnv) hardenAgentNode() {
	t := k.t
	const ns, other = "hard-node", "node-b"
	me := k.node.Name
	agentPod := k.jsonpath("pods", "-n", "podsnapshot-system", "-l", "app.kubernetes.io/name=podsnapshot-agent", "-o", "jsonpath={.items[0].metadata.name}")
	kc := filepath.Join(t.TempDir(), "agent.kubeconfig")
	must(t, k.kube.ServiceAccountKubeconfig("podsnapshot-system", "podsnapshot-agent", kc,
		"--bound-object-kind=Pod", "--bound-object-name="+agentPod))
	asAgent := func(stdin string, args ...string) (string, error) {
		return k.kube.KubectlInput(stdin, append([]string{"--kubeconfig", kc}, args...)...)
	}
	refused := func(what, want string, err error, out string) {
		t.Helper()
		if err == nil {
			t.Fatalf("the agent of %s may %s: %s", me, what, out)
		}
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("the agent of %s to %s: %v; want a refusal saying %q", me, what, err, want)
		}
	}
	allowed := func(what string, err error, out string) {
		t.Helper()
		if err != nil {
			t.Fatalf("the agent of %s may not %s: %v %s", me, what, err, out)
		}
	}

	k.apply(fmt.Sprintf(`apiVersion: v1
kind: Node
metadata: {name: %s}
`, other))
	t.Cleanup(func() {
		k.kube.Kubectl("delete", "namespace", ns, "--wait=false")
		k.kube.Kubectl("delete", "node", other, "--ignore-not-found")
	})
	k.createNamespace(ns)
	// Pods bound to each node that no kubelet runs (no RuntimeClass: they stay Pending on
	// node-b; on this node the kubelet may run them, which does not matter here).
	for _, p := range []struct{ name, node string }{{"theirs", other}, {"mine", me}} {
		k.apply(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 0
  containers: [{name: c, image: %s, imagePullPolicy: Never, command: ["sleep", "3600"]}]
`, p.name, ns, p.node, harness.BusyboxImage))
	}

	// Pods: the PodRestored condition on its own node's pod only.
	cond := `{"status":{"conditions":[{"type":"PodRestored","status":"True","reason":"Restored","message":"forged"}]}}`
	// (kubectl patch reads pods/status first, which the agent may not: a patch as the
	// agent's reporter sends it.)
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	must(t, err)
	cs, err := kubernetes.NewForConfig(cfg)
	must(t, err)
	patchStatus := func(name string) error {
		_, err := cs.CoreV1().Pods(ns).Patch(t.Context(), name, types.StrategicMergePatchType, []byte(cond), metav1.PatchOptions{}, "status")
		return err
	}
	refused("set PodRestored on node-b's pod", "may not set the status of pod "+ns+"/theirs of node "+other, patchStatus("theirs"), "")
	allowed("set PodRestored on its own node's pod", patchStatus("mine"), "")
	var out string

	// Events: only as itself.
	event := func(name, host string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Event
metadata: {name: %s, namespace: %s}
involvedObject: {apiVersion: v1, kind: Pod, namespace: %s, name: theirs}
reason: GKEPodSnapshotting
message: Successfully restored the pod
type: Normal
source: {component: podsnapshot-agent, host: %s}
reportingComponent: podsnapshot.gke.io/podsnapshot-agent
reportingInstance: podsnapshot-agent-%s
`, name, ns, ns, host, host)
	}
	out, err = asAgent(event("forged", other), "create", "-f", "-")
	refused("record an Event as node-b's agent", "may record Events only with source.host "+me, err, out)
	out, err = asAgent(event("own", me), "create", "-f", "-")
	allowed("record an Event as itself", err, out)

	// PodSnapshots: create only with its node's label; node-b's not deleted, not re-pointed.
	snap := func(name, node string) string {
		return fmt.Sprintf(`apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshot
metadata:
  name: %s
  namespace: %s
  labels: {podsnapshot.gke.io/node: %s}
spec: {policyName: p}
`, name, ns, node)
	}
	out, err = asAgent(snap("forged", other), "create", "-f", "-")
	refused("create a PodSnapshot of node-b", "may create only PodSnapshots labelled podsnapshot.gke.io/node="+me, err, out)
	out, err = asAgent(snap("own", me), "create", "-f", "-")
	allowed("create a PodSnapshot of its node", err, out)
	k.apply(snap("theirs", other))
	path := "gs://snapshots/pods/" + ns + "/p/theirs"
	k.kubectl("-n", ns, "patch", "podsnapshot", "theirs", "--subresource=status", "--type=merge",
		"-p", fmt.Sprintf(`{"status":{"nodeName":%q,"storagePath":%q}}`, other, path))
	out, err = asAgent("", "-n", ns, "patch", "podsnapshot", "theirs", "--subresource=status", "--type=merge",
		"-p", `{"status":{"storagePath":"gs://snapshots/pods/`+ns+`/p/elsewhere"}}`)
	refused("re-point node-b's PodSnapshot", "may change only the conditions and lastAccessTime of PodSnapshot "+ns+"/theirs of node "+other, err, out)
	out, err = asAgent("", "-n", ns, "patch", "podsnapshot", "theirs", "--subresource=status", "--type=merge",
		"-p", `{"status":{"lastAccessTime":"2026-12-07T00:00:00Z"}}`)
	allowed("record a restore of node-b's PodSnapshot (lastAccessTime)", err, out)
	out, err = asAgent("", "-n", ns, "delete", "podsnapshot", "theirs", "--wait=false")
	refused("delete node-b's PodSnapshot", "may not delete PodSnapshot "+ns+"/theirs of node "+other, err, out)
	out, err = asAgent("", "-n", ns, "delete", "podsnapshot", "own", "--wait=false")
	allowed("delete its node's PodSnapshot", err, out)

	// Manual triggers: not one node-b took.
	k.apply(fmt.Sprintf(`apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotManualTrigger
metadata: {name: theirs, namespace: %s}
spec: {targetPod: theirs}
`, ns))
	k.kubectl("-n", ns, "patch", "podsnapshotmanualtrigger", "theirs", "--subresource=status", "--type=merge",
		"-p", fmt.Sprintf(`{"status":{"nodeName":%q,"conditions":[{"type":"Triggered","status":"Unknown","reason":"Checkpointing","message":"checkpointing","lastTransitionTime":"2026-12-07T00:00:00Z"}]}}`, other))
	out, err = asAgent("", "-n", ns, "patch", "podsnapshotmanualtrigger", "theirs", "--subresource=status", "--type=merge",
		"-p", fmt.Sprintf(`{"status":{"nodeName":%q,"conditions":[{"type":"Triggered","status":"False","reason":"Failed","message":"forged","lastTransitionTime":"2026-12-07T00:00:00Z"}]}}`, me))
	refused("fail node-b's trigger", "not of one node "+other+" took", err, out)

	// Nodes: only its own.
	out, err = asAgent("", "label", "node", other, "podsnapshot.gke.io/ready=true")
	refused("label node-b", "nothing else of node "+other, err, out)
	out, err = asAgent("", "label", "node", me, "tenant=b")
	refused("give its own node another label", "nothing else of node "+me, err, out)
	out, err = asAgent("", "label", "node", me, "--overwrite", "podsnapshot.gke.io/ready=true")
	allowed("set its own node's podsnapshot.gke.io/ready label", err, out)

	// A token that names no node (not bound to a pod) writes nothing.
	unbound := filepath.Join(t.TempDir(), "unbound.kubeconfig")
	must(t, k.kube.ServiceAccountKubeconfig("podsnapshot-system", "podsnapshot-agent", unbound))
	out, err = k.kube.KubectlInput(snap("unbound", me), "--kubeconfig", unbound, "create", "-f", "-")
	refused("write with a token bound to no pod", "credentials name no node", err, out)

	// Item 5: a local-store PodSnapshot of node-b being deleted waits for node-b's agent
	// while node-b exists, and goes once node-b is deleted (the files went with it).
	k.apply(snap("local", other))
	k.kubectl("-n", ns, "patch", "podsnapshot", "local", "--subresource=status", "--type=merge",
		"-p", fmt.Sprintf(`{"status":{"nodeName":%q,"storagePath":"file:///var/lib/podsnapshot/store/%s/p/local"}}`, other, ns))
	harness.Eventually(t, 15*time.Second, "the controller's finalizer on PodSnapshot local", func() bool {
		return strings.Contains(k.jsonpath("podsnapshot", "-n", ns, "local", "-o", "jsonpath={.metadata.finalizers}"), "podsnapshot-finalizer")
	})
	out, err = asAgent("", "-n", ns, "patch", "podsnapshot", "local", "--subresource=status", "--type=merge",
		"-p", `{"status":{"lastAccessTime":"2026-12-07T00:00:00Z"}}`)
	refused("change node-b's local-store PodSnapshot", "none of a local-store one", err, out)
	k.kubectl("-n", ns, "delete", "podsnapshot", "local", "--wait=false")
	time.Sleep(3 * time.Second)
	if k.jsonpath("podsnapshot", "-n", ns, "local", "-o", "jsonpath={.metadata.name}") != "local" {
		t.Fatal("local-store PodSnapshot of node-b went while node-b exists (its agent deletes the files)")
	}
	k.kubectl("delete", "pod", "-n", ns, "theirs", "--grace-period=0", "--force")
	k.kubectl("delete", "node", other)
	harness.Eventually(t, 30*time.Second, "PodSnapshot local gone after its node", func() bool {
		_, err := k.kube.Kubectl("-n", ns, "get", "podsnapshot", "local")
		return err != nil && strings.Contains(err.Error(), "NotFound")
	})
}
