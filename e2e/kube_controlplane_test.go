package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/testenv/kube"
)

const deployDir = "../deploy/kubernetes"

// startControlPlane installs the project's Kubernetes side on a kubeEnv as
// deploy/kubernetes does: the CRDs, namespace podsnapshot-system and the RBAC applied
// with kubectl (the whole kustomization checked with --dry-run=server), and
// podsnapshot-agent as node agent and as controller (kube.ControlPlane: host processes
// with their service accounts' tokens, metrics on, controller sync every 2 s). The env's
// hand-written policy files are removed: policies come from the API only. Namespace test
// is created. The agent's and controller's logs end the test log when it fails.
func (k *kubeEnv) startControlPlane() *kube.ControlPlane {
	t := k.t
	t.Helper()
	for _, f := range []string{"store.yaml", "policies.yaml"} {
		os.Remove(filepath.Join(k.policyDir, f))
	}
	k.kubectl("apply", "-f", filepath.Join(deployDir, "namespace.yaml"), "-f", filepath.Join(deployDir, "crds"),
		"-f", filepath.Join(deployDir, "rbac.yaml"))
	k.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
	// The whole install as the README gives it (kubectl apply -k), checked by the API
	// server; the agent and controller themselves run as host processes below.
	k.kubectl("apply", "-k", deployDir, "--dry-run=server")
	k.kubectl("create", "namespace", "test")
	harness.Eventually(t, 60*time.Second, "service account test/default", func() bool {
		_, err := k.kube.Kubectl("-n", "test", "get", "serviceaccount", "default")
		return err == nil
	})
	cp, err := k.kube.StartControlPlane(kube.ControlPlaneOptions{Binary: harness.BuildAgent(t), ShimConfig: k.config,
		ContainerdAddress: k.cd.Address, Dir: k.dir, Env: append(os.Environ(), k.envVars...),
		Metrics: true, SyncInterval: 2 * time.Second, LogLevel: "debug"})
	must(t, err)
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("agent %s", kube.LogTail(cp.AgentLog, 12<<10))
			t.Logf("controller %s", kube.LogTail(cp.ControllerLog, 12<<10))
		}
	})
	return cp
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
