package e2e

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/testenv/kube"
	"github.com/podsnapshot/podsnapshot/storage"
)

// newInstalledKubeEnv is a one-node cluster (kube.Options.Nodes) with podsnapshot
// installed from the shipped kustomization as a user would (clusterEnv: make push,
// kubectl apply -k; the agent DaemonSet and the controller Deployment run as pods), seen
// through a kubeEnv: policyDir and workDir are the node's /etc/podsnapshot and
// /var/lib/podsnapshot as the host sees them, k.cd its containerd, and the store of kind:
// a local one at the node's /var/lib/podsnapshot/store (storeURL is the node's path, the
// one the shim and the PodSnapshots name; repo and store read it from the host), or the
// bucket "snapshots" in fake-gcs-server (storeURL gs://snapshots/pods). Namespace test
// is created. The controller syncs every minute, its default.
func newInstalledKubeEnv(t *testing.T, kind storeKind) *kubeEnv {
	t.Helper()
	return installedKubeEnv(t, kind, newClusterEnv(t, 1))
}

// installedKubeEnv is newInstalledKubeEnv on the one-node cluster ce.
func installedKubeEnv(t *testing.T, kind storeKind, ce *clusterEnv) *kubeEnv {
	t.Helper()
	ce.push()
	ce.install()
	n := ce.kube.Nodes[0]
	e := &env{t: t, dir: ce.dir, policyDir: n.NodeDir("/etc/podsnapshot"), workDir: n.NodeDir("/var/lib/podsnapshot")}
	e.cd = harness.AttachContainerd(t, n.Dir, n.Socket(), filepath.Join(ce.kube.LogDir, n.Name+"-containerd.log"))
	hostStore := ""
	switch kind {
	case localStore:
		e.storeURL = "file://" + nodeStore
		hostStore = "file://" + filepath.Join(n.NodeDir("/var/lib/podsnapshot"), "store")
	case gcsStore:
		must(t, ce.gcs.CreateBucket(t.Context(), "test", "snapshots"))
		e.storeURL, hostStore = "gs://snapshots/pods", "gs://snapshots/pods"
		t.Setenv("STORAGE_EMULATOR_HOST", ce.gcs.Host)
	}
	if hostStore != "" {
		st, err := storage.Open(t.Context(), hostStore)
		must(t, err)
		t.Cleanup(func() { st.Close() })
		e.store, e.repo = st, &repo.Repo{Store: st}
	}
	k := &kubeEnv{env: e, kube: ce.kube, node: n}
	k.createNamespace("test")
	t.Cleanup(func() {
		if t.Failed() {
			for _, c := range []string{"install", "agent"} {
				out, _ := k.kube.Kubectl("-n", "podsnapshot-system", "logs", "-l", "app.kubernetes.io/name=podsnapshot-agent", "-c", c, "--tail=200")
				t.Logf("podsnapshot-agent %s log:\n%s", c, out)
			}
			out, _ := k.kube.Kubectl("-n", "podsnapshot-system", "logs", "deployment/podsnapshot-controller", "--tail=200")
			t.Logf("podsnapshot-controller log:\n%s", out)
		}
	})
	return k
}

// nodeStore is the local store's path on the node: below /var/lib/podsnapshot, which
// the agent mounts, so that it can delete the store's snapshots.
const nodeStore = "/var/lib/podsnapshot/store"

// hostPath is where the host sees path p of the node: below the node's own directory
// for p below one of kube.NodePaths, p itself otherwise.
func (k *kubeEnv) hostPath(p string) string {
	for _, np := range kube.NodePaths {
		if rest, ok := strings.CutPrefix(p, np); ok && (rest == "" || strings.HasPrefix(rest, "/")) {
			return filepath.Join(k.node.NodeDir(np), rest)
		}
	}
	return p
}

// agentMetrics returns the agent's metrics text, read from the node's loopback (the agent
// has the node's network and binds /metrics to 127.0.0.1).
func (k *kubeEnv) agentMetrics() string {
	k.t.Helper()
	code, body, err := k.nodeGet("http://127.0.0.1:9808/metrics", "")
	if err != nil || code != http.StatusOK {
		k.t.Fatalf("agent /metrics at the node's 127.0.0.1:9808: %d %v", code, err)
	}
	return body
}

// controllerMetrics is the URL of the controller's /metrics (its pod IP, routed through
// the node).

func (k *kubeEnv) controllerMetrics() string {
	ip := k.kubectl("-n", "podsnapshot-system", "get", "pods", "-l", "app.kubernetes.io/name=podsnapshot-controller",
		"-o", "jsonpath={.items[0].status.podIP}")
	return "http://" + ip + ":9808/metrics"
}

// killAgent SIGKILLs the node's podsnapshot-agent process (the kubelet restarts the
// container by itself, with its back-off).
func (k *kubeEnv) killAgent() {
	k.t.Helper()
	killed := 0
	for _, p := range k.node.Processes() {
		if len(p.Cmdline) > 0 && filepath.Base(p.Cmdline[0]) == "podsnapshot-agent" && slices.Contains(p.Cmdline, "--role=agent") {
			must(k.t, syscall.Kill(p.PID, syscall.SIGKILL))
			killed++
		}
	}
	if killed != 1 {
		k.t.Fatalf("killed %d podsnapshot-agent processes on %s, want 1", killed, k.node.Name)
	}
}

// restartAgent deletes the agent's pod: the DaemonSet makes a new one at once, where a
// container the kubelet restarts would wait out its crash back-off.
func (k *kubeEnv) restartAgent() {
	k.kubectl("-n", "podsnapshot-system", "delete", "pod", "-l", "app.kubernetes.io/name=podsnapshot-agent", "--wait=true", "--timeout=60s")
	k.kubectl("-n", "podsnapshot-system", "rollout", "status", "daemonset/podsnapshot-agent", "--timeout=120s")
}

// scrape returns the metrics text at url.
func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	must(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	must(t, err)
	return string(b)
}

// jsonpath runs kubectl get with a jsonpath template; "" when the object is missing.
func (k *kubeEnv) jsonpath(args ...string) string {
	out, err := k.kube.Kubectl(append([]string{"get"}, args...)...)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// events lists the messages of pod ns/name's GKEPodSnapshotting events.
func (k *kubeEnv) events(ns, pod string) string {
	return k.jsonpath("events", "-n", ns, "--field-selector", "involvedObject.name="+pod+",reason=GKEPodSnapshotting",
		"-o", `jsonpath={range .items[*]}{.message}{"\n"}{end}`)
}

// waitEvent waits for an event on pod ns/name whose message contains want.
func (k *kubeEnv) waitEvent(ns, pod, want string, timeout time.Duration) string {
	k.t.Helper()
	var got string
	harness.Eventually(k.t, timeout, fmt.Sprintf("event %q on pod %s/%s", want, ns, pod), func() bool {
		got = k.events(ns, pod)
		return strings.Contains(got, want)
	})
	return got
}

// createNamespace creates namespace ns and waits for its default service account (the
// ServiceAccount admission plugin refuses pods before kube-controller-manager made it).
func (k *kubeEnv) createNamespace(ns string) {
	k.t.Helper()
	k.kubectl("create", "namespace", ns)
	harness.Eventually(k.t, 60*time.Second, "service account "+ns+"/default", func() bool {
		_, err := k.kube.Kubectl("-n", ns, "get", "serviceaccount", "default")
		return err == nil
	})
}
