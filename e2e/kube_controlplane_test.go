package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/testenv/hostproc"
)

// controlPlane is the project's Kubernetes side on a kubeEnv, as deploy/kubernetes
// installs it: the CRDs, namespace podsnapshot-system and the RBAC applied with kubectl,
// and podsnapshot-agent (node agent) and podsnapshot-agent --role=controller running as
// host processes (pods cannot reach the API server here: no kube-proxy) with kubeconfigs
// holding their service accounts' tokens, so RBAC is what the shipped manifests grant.
// The env's hand-written policy files are removed: policies come from the API only.
type controlPlane struct {
	k                    *kubeEnv
	agent, controller    *hostproc.Daemon
	agentLog, ctrlLog    string
	agentMetrics         string // http://127.0.0.1:PORT/metrics
	controllerMetrics    string
	agentArgs, agentEnvs []string
}

const deployDir = "../deploy/kubernetes"

func (k *kubeEnv) startControlPlane() *controlPlane {
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

	bin := harness.BuildAgent(t)
	cp := &controlPlane{k: k}
	agentPort, ctrlPort := freePort(t), freePort(t)
	cp.agentMetrics = fmt.Sprintf("http://127.0.0.1:%d/metrics", agentPort)
	cp.controllerMetrics = fmt.Sprintf("http://127.0.0.1:%d/metrics", ctrlPort)
	cp.agentArgs = []string{bin, "--role=agent", "--config", k.config, "--node-name", k.kube.NodeName,
		"--containerd-address", k.cd.Address, "--kubeconfig", cp.tokenKubeconfig("podsnapshot-agent"),
		"--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", agentPort), "--health-probe-bind-address", "0",
		"--report-poll-interval", "200ms", "--log-level", "debug"}
	cp.agentEnvs = append(os.Environ(), k.envVars...)
	cp.agentLog = filepath.Join(k.dir, "agent.log")
	cp.startAgent()
	cp.ctrlLog = filepath.Join(k.dir, "controller.log")
	cp.controller = cp.daemon(cp.ctrlLog, cp.agentEnvs, bin, "--role=controller", "--kubeconfig", cp.tokenKubeconfig("podsnapshot-controller"),
		"--leader-election-namespace", "podsnapshot-system", "--local-stores", "--sync-interval", "2s",
		"--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", ctrlPort), "--health-probe-bind-address", "0", "--log-level", "debug")
	t.Cleanup(func() {
		for _, d := range []*hostproc.Daemon{cp.agent, cp.controller} {
			if d != nil {
				d.Stop(10 * time.Second)
			}
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", tail(cp.agentLog, 12<<10))
			t.Logf("controller log:\n%s", tail(cp.ctrlLog, 12<<10))
		}
	})
	return cp
}

// startAgent (re)starts the node agent, appending to its log.
func (cp *controlPlane) startAgent() {
	cp.agent = cp.daemon(cp.agentLog, cp.agentEnvs, cp.agentArgs...)
}

func (cp *controlPlane) daemon(logPath string, env []string, args ...string) *hostproc.Daemon {
	t := cp.k.t
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	must(t, err)
	defer f.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr, cmd.Env = f, f, env
	d, err := hostproc.StartDaemon(cmd)
	must(t, err)
	return d
}

// tokenKubeconfig writes a kubeconfig acting as service account podsnapshot-system/sa
// (kube.Cluster.ServiceAccountKubeconfig) and returns its path.
func (cp *controlPlane) tokenKubeconfig(sa string) string {
	path := filepath.Join(cp.k.dir, sa+".kubeconfig")
	must(cp.k.t, cp.k.kube.ServiceAccountKubeconfig("podsnapshot-system", sa, path))
	return path
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

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func tail(path string, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
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
