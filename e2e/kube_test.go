package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/testenv/hostproc"
	"github.com/podsnapshot/podsnapshot/internal/testenv/kube"
)

// Pods through a real Kubernetes: the API server, the kubelet, and the CRI containerd of
// a CRI env, as on a node.

// kubeEnv is a CRI env (newCRIEnv: private containerd with the podsnapshot handler, CNI
// bridge, test images in namespace k8s.io, a shim config, policies and a store) and a
// single-node Kubernetes (internal/testenv/kube) whose kubelet runs pods on that
// containerd. The shim's kubelet_pods_dir is the kubelet's pods directory, so gVisor
// mount hints for emptyDir volumes find their host path.
type kubeEnv struct {
	*env
	kube *kube.Cluster
	node *kube.Node // newInstalledKubeEnv's one node; nil for newKubeEnv
}

// newKubeEnv starts a CRI env with store kind and a cluster on it (about 20-40 s; the
// binaries come from `make deps-kube`). Pods are created with kubeEnv.apply; write them
// with kubePod (runtimeClassName podsnapshot, spec.nodeName, imagePullPolicy Never: there
// is no scheduler and no registry). The cluster's state is below a short /tmp/psk-*
// directory (unix socket paths); its daemons' logs are in kube.LogDir and end the test
// log when the test fails. Cleanup closes the cluster (deletes pods, stops the daemons,
// undoes its host changes; leftovers fail the test) before the env's own cleanup. One
// cluster runs on the machine at a time (kube.LockPath): parallel callers wait.
func newKubeEnv(t *testing.T, kind storeKind) *kubeEnv {
	t.Helper()
	dir := kubeStateDir(t)
	kubeletDir := filepath.Join(dir, "kubelet")
	e := newEnvWith(t, kind, envOptions{cri: true, kubeletPodsDir: filepath.Join(kubeletDir, "pods")})
	start := time.Now()
	c, err := kube.Start(kube.Options{Dir: dir, KubeletDir: kubeletDir, CRIEndpoint: e.cd.Address, Logf: t.Logf})
	if err != nil {
		t.Fatalf("start Kubernetes: %v", err)
	}
	closeAtCleanup(t, c)
	t.Logf("Kubernetes ready in %.1fs: API %s, node %s (%s), kubeconfig %s",
		time.Since(start).Seconds(), c.APIServerURL, c.NodeName, c.NodeIP, c.Kubeconfig)
	return &kubeEnv{env: e, kube: c}
}

// kubeStateDir makes a cluster's short state directory (/tmp/psk-*: the kubelet's unix
// socket paths must stay short), removed by a cleanup registered first, so that it runs
// last, after the cluster's own: never through a mount left below it.
func kubeStateDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/tmp", "psk-")
	must(t, err)
	t.Cleanup(func() {
		if err := hostproc.UnmountBelow(dir); err != nil {
			t.Errorf("kube state dir: %v", err)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

// closeAtCleanup closes cluster c when the test ends (its daemons' logs in the test log
// first when the test failed); what Close finds left fails the test.
func closeAtCleanup(t *testing.T, c *kube.Cluster) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("Kubernetes logs:\n%s", c.Logs(16<<10))
		}
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
}

// kubectl runs kubectl against the cluster and returns its stdout; an error fails the
// test.
func (k *kubeEnv) kubectl(args ...string) string {
	k.t.Helper()
	out, err := k.kube.Kubectl(args...)
	if err != nil {
		k.t.Fatal(err)
	}
	return out
}

// apply creates or updates the objects of a YAML manifest (`kubectl apply -f -`).
func (k *kubeEnv) apply(manifest string) {
	k.t.Helper()
	if _, err := k.kube.KubectlInput(manifest, "apply", "-f", "-"); err != nil {
		k.t.Fatalf("%v\nmanifest:\n%s", err, manifest)
	}
}

// kubePod returns the manifest of a one-container pod in namespace ns on the cluster's
// node, run by the podsnapshot RuntimeClass, from the busybox test image, running
// `sh -c script`, with labels (nil: none). It stops within 1 s of deletion
// (terminationGracePeriodSeconds: a shell as PID 1 ignores SIGTERM).
func (k *kubeEnv) kubePod(name, ns string, labels map[string]string, script string) string {
	var ls []string
	for key, v := range labels {
		ls = append(ls, fmt.Sprintf("    %s: %q", key, v))
	}
	sort.Strings(ls)
	meta := ""
	if len(ls) > 0 {
		meta = "  labels:\n" + strings.Join(ls, "\n") + "\n"
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
%sspec:
  nodeName: %s
  runtimeClassName: %s
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: %s
    imagePullPolicy: Never
    command: ["sh", "-c", %q]
`, name, ns, meta, k.kube.NodeName, kube.RuntimeClass, harness.BusyboxImage, script)
}

// waitReady waits up to timeout for pod ns/name to be Ready; on failure the pod's
// description is in the message.
func (k *kubeEnv) waitReady(ns, name string, timeout time.Duration) {
	k.t.Helper()
	_, err := k.kube.Kubectl("-n", ns, "wait", "--for=condition=Ready", "pod/"+name, fmt.Sprintf("--timeout=%ds", int(timeout.Seconds())))
	if err != nil {
		desc, _ := k.kube.Kubectl("-n", ns, "describe", "pod", name)
		k.t.Fatalf("%v\n%s", err, desc)
	}
}

// sandboxID returns the CRI sandbox ID of pod ns/name (the pause container's, the ID
// the shim logs the pod's decision line with).
func (k *kubeEnv) sandboxID(ns, name string) string {
	k.t.Helper()
	ids := strings.Fields(k.cd.MustCrictl(k.t, "pods", "--namespace", ns, "--name", name, "--state", "ready", "-q"))
	if len(ids) != 1 {
		k.t.Fatalf("want one ready CRI sandbox for pod %s/%s, got %q", ns, name, ids)
	}
	return ids[0]
}

// TestKubePodRunsThroughShim: a pod created through the API with runtimeClassName
// podsnapshot runs under the shim and runsc; its log and exec work through the API server
// and the kubelet; it keeps running while the API server is stopped and restarted;
// deleting it and closing the cluster leave no process, mount, cgroup, veth or kernel
// setting behind.
func TestKubePodRunsThroughShim(t *testing.T) {
	begin := time.Now()
	k := newKubeEnv(t, noStore)
	k.apply(k.kubePod("hello", "default", map[string]string{"app": "hello"},
		"for i in 1 2 3; do echo hello-line-$i; done; exec sleep 3600"))
	k.waitReady("default", "hello", 90*time.Second)

	harness.Eventually(t, 30*time.Second, "kubectl logs shows the pod's three lines", func() bool {
		out, _ := k.kube.Kubectl("logs", "hello")
		return strings.Count(out, "hello-line-") == 3 && strings.Contains(out, "hello-line-3")
	})
	if out := k.kubectl("exec", "hello", "--", "sh", "-c", "echo exec-$((6*7))"); strings.TrimSpace(out) != "exec-42" {
		t.Fatalf("kubectl exec printed %q, want exec-42", out)
	}
	// gVisor's kernel log, which no Linux host kernel has.
	if out := k.kubectl("exec", "hello", "--", "dmesg"); !strings.Contains(out, "gVisor") {
		t.Fatalf("dmesg in the pod does not come from gVisor:\n%s", out)
	}

	// The sandbox is a containerd container of our runtime type, the shim decided on it,
	// and one runsc sandbox serves the pod.
	sb := k.sandboxID("default", "hello")
	var info struct{ Runtime struct{ Name string } }
	must(t, json.Unmarshal([]byte(k.cd.MustCtr(t, "containers", "info", sb)), &info))
	if info.Runtime.Name != runtime {
		t.Fatalf("sandbox %s runs with runtime %q, want %q", sb, info.Runtime.Name, runtime)
	}
	if line := k.decision(sb); !strings.Contains(line, "plain runsc") {
		t.Fatalf("decision for a pod without policy: %q", line)
	}
	procs, err := harness.FindProcesses([]string{k.runscRoot, k.cd.Dir})
	must(t, err)
	sandboxes := 0
	for _, p := range procs {
		if filepath.Base(p.Cmdline[0]) == "runsc-sandbox" {
			sandboxes++
		}
	}
	if sandboxes != 1 {
		t.Fatalf("want 1 runsc sandbox for the pod, found %d:\n%v", sandboxes, procs)
	}

	// Without the API server the node keeps the pod running; the API server comes back
	// on the same port and etcd, and clients and the kubelet reconnect.
	must(t, k.kube.StopAPIServer())
	if _, err := k.kube.Kubectl("get", "pod", "hello"); err == nil {
		t.Fatal("kubectl get pod answered with the API server stopped")
	}
	if out := k.cd.MustCrictl(t, "ps", "--pod", sb, "--state", "running", "-q"); strings.TrimSpace(out) == "" {
		t.Fatal("the pod's container stopped with the API server")
	}
	must(t, k.kube.StartAPIServer())
	if out := k.kubectl("get", "pod", "hello", "-o", "jsonpath={.status.phase}"); out != "Running" {
		t.Fatalf("pod phase after the API server's restart: %q", out)
	}

	t.Logf("deleting the pod at %.1fs", time.Since(begin).Seconds())
	k.kubectl("delete", "pod", "hello", "--wait=true", "--timeout=60s")
	t.Logf("pod deleted at %.1fs", time.Since(begin).Seconds())
	harness.Eventually(t, 30*time.Second, "no shim or runsc process of the pod left", func() bool {
		procs, err := harness.FindProcesses([]string{k.runscRoot, k.cd.Dir})
		return err == nil && len(procs) == 0
	})
	// The kubelet stops the sandbox at once but removes it only at its next garbage
	// collection (a minute or so); Close removes it.
	if out := k.cd.MustCrictl(t, "pods", "--state", "ready", "-q"); strings.TrimSpace(out) != "" {
		t.Fatalf("ready CRI sandboxes left after the pod's deletion: %s", out)
	}

	// Close (cleanup would too) and check that the host is as the cluster found it.
	if err := k.kube.Close(); err != nil {
		t.Fatal(err)
	}
	if veths := bridgePorts(t, k.net.Bridge); len(veths) > 0 {
		t.Fatalf("veths still on bridge %s after Close: %v", k.net.Bridge, veths)
	}
	t.Logf("whole test body in %.1fs", time.Since(begin).Seconds())
}

// bridgePorts lists the links attached to bridge (pods' veths).
func bridgePorts(t *testing.T, bridge string) []string {
	t.Helper()
	br, err := netlink.LinkByName(bridge)
	must(t, err)
	links, err := netlink.LinkList()
	must(t, err)
	var out []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}
