package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/agent"
)

// tokenReviewer checks a service account token with the API server's TokenReview for
// audience, as a workload identity pool checks it against the cluster's issuer; it
// returns the token's user name.
func tokenReviewer(t *testing.T, kubeconfig, audience string) func(string) (string, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	must(t, err)
	cs, err := kubernetes.NewForConfig(cfg)
	must(t, err)
	return func(token string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tr, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
			Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{audience}}}, metav1.CreateOptions{})
		if err != nil {
			return "", err
		}
		if !tr.Status.Authenticated {
			return "", fmt.Errorf("not authenticated: %s", tr.Status.Error)
		}
		return tr.Status.User.Username, nil
	}
}

// tenantStorageConfig is a podKSA storage config on the bucket "snapshots" below path.
func tenantStorageConfig(name, path string) string {
	return fmt.Sprintf(`apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotStorageConfig
metadata:
  name: %s
spec:
  snapshotStorageConfig:
    gcs:
      bucket: snapshots
      path: %s
      tokenSource: podKSA
`, name, path)
}

// tenantPolicy is a workload-triggered policy of namespace ns on storage config sc,
// selecting app: counter.
func tenantPolicy(ns, sc string) string {
	return fmt.Sprintf(`apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotPolicy
metadata:
  name: p
  namespace: %s
spec:
  storageConfigName: %s
  selector:
    matchLabels: {app: counter}
  triggerConfig: {type: workload, postCheckpoint: resume}
`, ns, sc)
}

// tenantPod is the counter pod of namespace ns, run as service account "runner".
func (k *kubeEnv) tenantPod(ns string) string {
	return strings.Replace(k.kubePod("counter", ns, map[string]string{"app": "counter"}, counterScript),
		"  terminationGracePeriodSeconds: 1\n", "  terminationGracePeriodSeconds: 1\n  serviceAccountName: runner\n", 1)
}

// TestKubeTokenSource (issue 25, must-shows 2-4): with gcs.tokenSource podKSA, each pod
// reads and writes the bucket with its own service account's token, exchanged at a
// Security Token Service; the node has no storage credentials. Namespaces a and b each
// have a service account "runner" granted only its own prefix. a's pod checkpoints and
// restores; b's pod, whose policy names a's storage config, cannot read a's snapshots
// (cold start, reason in the event) nor write under a's prefix (its checkpoint fails);
// every request the front saw carried a pod's exchanged token. The agent's credentials
// cannot mint a token for the API server or one bound to no pod. With the agent stopped, a
// new pod gets no token and starts cold with the reason; with the agent back, the next
// pod restores. No pod token appears in any log or event.
func TestKubeTokenSource(t *testing.T) {
	ce := newClusterEnvWith(t, clusterOptions{nodes: 1, identity: true})
	k := installedKubeEnv(t, gcsStore, ce)
	ident := ce.ident
	for _, ns := range []string{"a", "b"} {
		k.kubectl("create", "namespace", ns)
		k.kubectl("-n", ns, "create", "serviceaccount", "runner")
		ident.Grant("system:serviceaccount:"+ns+":runner", "snapshots", "tenant-"+ns+"/")
	}
	k.apply(tenantStorageConfig("tenant-a", "tenant-a") + "---\n" + tenantStorageConfig("tenant-b", "tenant-b") + "---\n" +
		tenantPolicy("a", "tenant-a") + "---\n" + tenantPolicy("b", "tenant-a"))
	// federatedP4SA is refused, naming the field.
	p4sa := strings.Replace(tenantStorageConfig("p4sa", "x"), "podKSA", "federatedP4SA", 1)
	if out, err := k.kube.KubectlInput(p4sa, "apply", "-f", "-"); err == nil || !strings.Contains(err.Error()+out, "tokenSource") {
		t.Fatalf("a storage config with tokenSource federatedP4SA: err=%v out=%q; want a refusal naming tokenSource", err, out)
	}
	harness.Eventually(t, 15*time.Second, "the policies on the node", func() bool {
		n := 0
		for _, ns := range []string{"a", "b"} {
			b, _ := os.ReadFile(filepath.Join(k.policyDir, agent.NamespaceFile(ns)))
			n += strings.Count(string(b), "kind: PodSnapshotPolicy")
		}
		return n == 2
	})
	tokenDir := filepath.Join(k.workDir, ".tokens")
	var podTokens []string // every pod token seen, for the leak check at the end
	readToken := func(ns string) string {
		uid := k.jsonpath("pod", "-n", ns, "counter", "-o", "jsonpath={.metadata.uid}")
		b, err := os.ReadFile(filepath.Join(tokenDir, uid))
		if err != nil {
			t.Fatalf("the token of pod %s/counter: %v", ns, err)
		}
		podTokens = append(podTokens, string(b))
		return string(b)
	}

	// 1. Tenant a: checkpoint, then restore, with a's token only.
	k.apply(k.tenantPod("a"))
	var uuid string
	harness.Eventually(t, 90*time.Second, "tenant a's PodSnapshot AllSnapshotsAvailable", func() bool {
		uuid = uuidRE.FindString(k.jsonpath("podsnapshots", "-n", "a", "-o", "name"))
		return uuid != "" && k.jsonpath("podsnapshot", "-n", "a", uuid, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].reason}`) == "AllSnapshotsAvailable"
	})
	if p := k.jsonpath("podsnapshot", "-n", "a", uuid, "-o", "jsonpath={.status.storagePath}"); p != "gs://snapshots/tenant-a/a/p/"+uuid {
		t.Fatalf("storagePath %q", p)
	}
	readToken("a")
	checkTokenPolicy(t, k)
	k.kubectl("-n", "a", "delete", "pod", "counter", "--wait=true", "--timeout=60s")
	k.apply(k.tenantPod("a"))
	k.waitEvent("a", "counter", "Successfully restored the pod from PodSnapshot a/"+uuid, 90*time.Second)
	readToken("a")

	// 2. Tenant b names a's storage config: refused reads (cold start with the reason) and
	// refused writes (its checkpoint fails).
	k.apply(k.tenantPod("b"))
	ev := k.waitEvent("b", "counter", "Started the pod without a snapshot (StorageUnreachable)", 60*time.Second)
	if !strings.Contains(ev, "system:serviceaccount:b:runner does not have storage access") {
		t.Fatalf("b's cold start does not say why: %s", ev)
	}
	readToken("b")
	// gVisor's save succeeds on the node (the workload goes on); the upload is refused.
	ev = k.waitEvent("b", "counter", "Failed to checkpoint the pod to PodSnapshot b/", 60*time.Second)
	if !strings.Contains(ev, "system:serviceaccount:b:runner does not have storage access to snapshots/tenant-a/b/") {
		t.Fatalf("b's failed checkpoint does not say why: %s", ev)
	}
	for _, r := range ident.Requests() {
		switch {
		case r.Principal == "":
			t.Errorf("a request without a pod's token: %+v", r)
		case r.Principal == "system:serviceaccount:b:runner" && r.Allowed:
			t.Errorf("b's service account was let through: %+v", r)
		case strings.HasPrefix(r.Object, "tenant-a/") && r.Allowed && r.Principal != "system:serviceaccount:a:runner":
			t.Errorf("a's prefix served to another principal: %+v", r)
		}
	}
	if n := countObjects(t, ce, "tenant-a/b/"); n != 0 {
		t.Fatalf("%d objects of b under a's prefix", n)
	}
	byPrincipal := map[string]int{}
	for _, r := range ident.Requests() {
		byPrincipal[fmt.Sprintf("%s allowed=%v", r.Principal, r.Allowed)]++
	}
	t.Logf("the front's requests by principal: %v", byPrincipal)
	k.kubectl("-n", "b", "delete", "pod", "counter", "--wait=true", "--timeout=60s")

	// 3. The agent stopped: no token, cold start with the reason; back: the next pod restores.
	k.kubectl("-n", "a", "delete", "pod", "counter", "--wait=true", "--timeout=60s")
	k.kubectl("-n", "podsnapshot-system", "patch", "daemonset", "podsnapshot-agent", "--type=merge",
		"-p", `{"spec":{"template":{"spec":{"nodeSelector":{"podsnapshot.test/agent":"off"}}}}}`)
	harness.Eventually(t, 60*time.Second, "the agent pod gone", func() bool {
		return k.jsonpath("pods", "-n", "podsnapshot-system", "-l", "app.kubernetes.io/name=podsnapshot-agent", "-o", "name") == ""
	})
	k.apply(k.tenantPod("a"))
	k.waitReady("a", "counter", 90*time.Second)
	if line := k.decision(k.sandboxID("a", "counter")); !strings.Contains(line, "no token for the pod's service account") {
		t.Fatalf("the pod started without the agent: %q", line)
	}
	k.kubectl("-n", "podsnapshot-system", "patch", "daemonset", "podsnapshot-agent", "--type=json",
		"-p", `[{"op":"remove","path":"/spec/template/spec/nodeSelector"}]`)
	k.kubectl("-n", "podsnapshot-system", "rollout", "status", "daemonset/podsnapshot-agent", "--timeout=120s")
	k.waitEvent("a", "counter", "Started the pod without a snapshot (StorageUnreachable)", 60*time.Second)
	k.kubectl("-n", "a", "delete", "pod", "counter", "--wait=true", "--timeout=60s")
	k.apply(k.tenantPod("a"))
	k.waitEvent("a", "counter", "Successfully restored the pod from PodSnapshot a/"+uuid, 90*time.Second)
	readToken("a")
	k.kubectl("-n", "a", "delete", "pod", "counter", "--wait=true", "--timeout=60s")
	harness.Eventually(t, 30*time.Second, "the deleted pods' tokens removed", func() bool {
		entries, _ := os.ReadDir(tokenDir)
		return len(entries) == 0
	})

	// 4. No pod token in any log or event.
	var logs strings.Builder
	logs.WriteString(k.cd.Logs())
	for _, c := range []string{"install", "agent"} {
		out, _ := k.kube.Kubectl("-n", "podsnapshot-system", "logs", "-l", "app.kubernetes.io/name=podsnapshot-agent", "-c", c, "--tail=-1")
		logs.WriteString(out)
	}
	out, _ := k.kube.Kubectl("-n", "podsnapshot-system", "logs", "deployment/podsnapshot-controller", "--tail=-1")
	logs.WriteString(out)
	logs.WriteString(k.kubectl("get", "events", "-A", "-o", "yaml"))
	daemonLogs, _ := filepath.Glob(filepath.Join(ce.kube.LogDir, "*.log")) // API server, kubelet, containerd...
	for _, f := range daemonLogs {
		b, _ := os.ReadFile(f)
		logs.Write(b)
	}
	for i, tok := range podTokens {
		if strings.Contains(logs.String(), strings.TrimSpace(tok)) {
			t.Fatalf("pod token %d appears in a log or event", i)
		}
	}
	t.Logf("%d pod tokens, none in %d bytes of logs and events", len(podTokens), logs.Len())
}

// checkTokenPolicy: the agent's credentials mint what the agent needs (a token of a/runner
// bound to pod a/counter, an IAM audience, an hour) and nothing else (token-policy.yaml):
// no token without a pod, for another audience (the API server's), for longer, or of the
// cluster's own service accounts.
func checkTokenPolicy(t *testing.T, k *kubeEnv) {
	t.Helper()
	bound := func(ns, pod string) []string {
		uid := k.jsonpath("pod", "-n", ns, pod, "-o", "jsonpath={.metadata.uid}")
		return []string{"--bound-object-kind=Pod", "--bound-object-name=" + pod, "--bound-object-uid=" + uid}
	}
	ctrl := k.jsonpath("pods", "-n", "podsnapshot-system", "-l", "app.kubernetes.io/name=podsnapshot-controller", "-o", "jsonpath={.items[0].metadata.name}")
	asAgent := func(args ...string) (string, error) {
		return k.kube.Kubectl(append([]string{"--as=system:serviceaccount:podsnapshot-system:podsnapshot-agent", "create", "token"}, args...)...)
	}
	iam := "--audience=https://iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/test-pool/providers/test-cluster"
	if out, err := asAgent(append([]string{"runner", "-n", "a", iam, "--duration=1h"}, bound("a", "counter")...)...); err != nil {
		t.Fatalf("the agent's own kind of token refused: %v %s", err, out)
	}
	for _, c := range []struct {
		args []string
		why  string
	}{
		{[]string{"runner", "-n", "a", iam, "--duration=1h"}, "only tokens bound to a pod"},
		{append([]string{"runner", "-n", "a", "--audience=https://kubernetes.default.svc.cluster.local", "--duration=1h"}, bound("a", "counter")...), "Workload Identity Federation providers"},
		{append([]string{"runner", "-n", "a", iam, "--duration=2h"}, bound("a", "counter")...), "an hour at most"},
		{append([]string{"podsnapshot-controller", "-n", "podsnapshot-system", iam, "--duration=1h"}, bound("podsnapshot-system", ctrl)...), "the cluster's own service accounts"},
	} {
		out, err := asAgent(c.args...)
		if err == nil || !strings.Contains(err.Error()+out, c.why) {
			t.Fatalf("kubectl create token %v as the agent: err=%v out=%q; want a refusal saying %q", c.args, err, out, c.why)
		}
	}
}

// countObjects counts the objects of bucket "snapshots" below prefix, read from
// fake-gcs-server directly (the test's own access, not a pod's).
func countObjects(t *testing.T, ce *clusterEnv, prefix string) int {
	t.Helper()
	names, err := ce.gcs.Objects(t.Context(), "snapshots")
	must(t, err)
	n := 0
	for _, name := range names {
		if strings.HasPrefix(name, prefix) {
			n++
		}
	}
	return n
}
