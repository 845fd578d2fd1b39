package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/agent"
	"github.com/podsnapshot/podsnapshot/internal/testenv"
	"github.com/podsnapshot/podsnapshot/internal/testenv/fakegcs"
	"github.com/podsnapshot/podsnapshot/internal/testenv/kube"
	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
	"github.com/podsnapshot/podsnapshot/internal/testenv/registry"
)

// A cluster whose nodes get podsnapshot from the shipped manifests, as a user's would:
// `make push` to a registry, `kubectl apply -k`, the agent DaemonSet's init container
// installing the shim, runsc and containerd's handler on each node.

// clusterEnv is a two-node cluster (kube.Options.Nodes: a network and a mount namespace
// per node, each with its own containerd, kubelet and kube-proxy; a scheduler), a
// registry and fake-gcs-server on the nodes' bridge, and a copy of deploy/kubernetes
// that `make push` points at the pushed image.
type clusterEnv struct {
	t     *testing.T
	kube  *kube.Cluster
	reg   *registry.Server
	gcs   *fakegcs.Server
	reads *harness.GCSReads // the nodes' way to gcs: bytes read per node
	// ident is the nodes' way to gcs in a cluster with clusterOptions.identity.
	ident  *harness.PodIdentityGCS
	deploy string // the copy of deploy/kubernetes
	dir    string
}

// guidePythonImage is the local stand-in for the guide's python image: the python test
// image, tagged so that the kubelet's default pull policy (IfNotPresent) uses it.
const guidePythonImage = "podsnapshot.test/python:3.12"

// newClusterEnv starts the cluster (about 40-60 s) with the pause, busybox and python
// images imported on every node, and nothing of podsnapshot on them.
func newClusterEnv(t *testing.T, nodes int) *clusterEnv {
	t.Helper()
	return newClusterEnvWith(t, clusterOptions{nodes: nodes})
}

// clusterOptions shape newClusterEnvWith's cluster.
type clusterOptions struct {
	nodes int
	// identity: the nodes have no storage credentials of their own and reach
	// fake-gcs-server only through a harness.PodIdentityGCS (ident), whose STS takes the
	// pods' service account tokens; each node's shim config, written before the install
	// (which keeps it), points gcs_endpoint and pod_identity at it.
	identity bool
}

// testProvider is the workload identity provider of identity clusters.
const testProvider = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/test-pool/providers/test-cluster"

func newClusterEnvWith(t *testing.T, o clusterOptions) *clusterEnv {
	t.Helper()
	nodes := o.nodes
	dir := kubeStateDir(t)
	imgs := harness.Images(t)
	py := appImage(t, "python")
	e := &clusterEnv{t: t, dir: dir}
	start := time.Now()
	c, err := kube.Start(kube.Options{Dir: dir, Nodes: nodes, Logf: t.Logf,
		NodeImages:   []string{imgs[harness.PauseImage].Archive, imgs[harness.BusyboxImage].Archive, py.Archive},
		SandboxImage: harness.PauseImage,
		BeforeNodes: func(ip net.IP) ([]string, []string, error) {
			if err := os.MkdirAll(filepath.Join(dir, "gcs"), 0o755); err != nil {
				return nil, nil, err
			}
			var err error
			if e.reg, err = registry.Start(ip.String()); err != nil {
				return nil, nil, err
			}
			if e.gcs, err = fakegcs.Start(context.Background(), fakegcs.Options{IP: ip.String(), Dir: filepath.Join(dir, "gcs")}); err != nil {
				return nil, nil, err
			}
			if o.identity {
				e.ident, err = harness.StartPodIdentityGCS(t, ip.String(), e.gcs.URL, testProvider)
				return nil, []string{e.reg.Host}, err
			}
			e.reads = harness.NewGCSReads(t, e.gcs.URL, ip.String())
			return []string{"STORAGE_EMULATOR_HOST=" + e.reads.Host}, []string{e.reg.Host}, nil
		}})
	t.Cleanup(func() {
		if e.gcs != nil {
			e.gcs.Stop(10 * time.Second)
		}
		if e.reg != nil {
			e.reg.Close()
		}
	})
	if err != nil {
		t.Fatalf("start Kubernetes: %v", err)
	}
	closeAtCleanup(t, c)
	e.kube = c
	for _, n := range c.Nodes {
		if out, err := exec.Command(filepath.Join(harness.DepsBin(t), "ctr"), "--address", n.Socket(), "-n", "k8s.io",
			"images", "tag", ociarchive.PythonImage, guidePythonImage).CombinedOutput(); err != nil {
			t.Fatalf("tag the python image on %s: %v: %s", n.Name, err, out)
		}
	}
	if o.identity {
		e.ident.SetReview(tokenReviewer(t, c.Kubeconfig, "https:"+testProvider))
		conf := fmt.Sprintf("gcs_endpoint = %q\n\n[pod_identity]\nworkload_identity_provider = %q\nsts_url = %q\n",
			e.ident.Endpoint, testProvider, e.ident.STSURL)
		for _, n := range c.Nodes {
			must(t, os.WriteFile(filepath.Join(n.NodeDir("/etc/containerd"), "podsnapshot.toml"), []byte(conf), 0o644))
		}
	}
	t.Logf("%d-node Kubernetes ready in %.1fs: API %s", nodes, time.Since(start).Seconds(), c.APIServerURL)
	return e
}

func (e *clusterEnv) kubectl(args ...string) string {
	e.t.Helper()
	out, err := e.kube.Kubectl(args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// push runs `make push` as a user would, into the registry, with a copy of
// deploy/kubernetes as the kustomization it updates, and returns the pushed reference.
func (e *clusterEnv) push() string {
	t := e.t
	e.deploy = filepath.Join(e.dir, "deploy-kubernetes")
	if out, err := exec.Command("cp", "-r", filepath.Join(harness.RepoRoot(t), "deploy", "kubernetes"), e.deploy).CombinedOutput(); err != nil {
		t.Fatalf("copy deploy/kubernetes: %v: %s", err, out)
	}
	reg := e.reg.Host + "/podsnapshot-e2e"
	cmd := exec.Command("make", "--no-print-directory", "push", "REGISTRY="+reg, "INSECURE=true", "VERSION=e2e",
		"OUT="+filepath.Join(e.dir, "out"), // not _out: other tests run its binaries
		"KUSTOMIZATION="+filepath.Join(e.deploy, "kustomization.yaml")+","+filepath.Join(e.deploy, "uninstall", "kustomization.yaml"))
	cmd.Dir = harness.RepoRoot(t)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make push: %v\n%s", err, out)
	}
	t.Logf("make push in %.1fs:\n%s", time.Since(start).Seconds(), out)
	return reg + "/podsnapshot:e2e"
}

// install applies the kustomization `make push` updated (push, through overlay) and
// waits until the agent DaemonSet is ready on every node (each node installed and
// labelled) and the controller rolled out; it returns how long the agents took from the
// apply.
func (e *clusterEnv) install() time.Duration {
	t := e.t
	t.Helper()
	begin := time.Now()
	e.kubectl("apply", "-k", e.overlay("overlay", e.deploy))
	out, err := e.kube.Kubectl("-n", "podsnapshot-system", "rollout", "status", "daemonset/podsnapshot-agent", "--timeout=180s")
	if err != nil {
		desc, _ := e.kube.Kubectl("-n", "podsnapshot-system", "describe", "pods")
		logs, _ := e.kube.Kubectl("-n", "podsnapshot-system", "logs", "-l", "app.kubernetes.io/name=podsnapshot-agent", "-c", "install", "--tail=50")
		t.Fatalf("%v\n%s\n%s\ninstall logs:\n%s", err, out, desc, logs)
	}
	took := time.Since(begin)
	e.kubectl("-n", "podsnapshot-system", "rollout", "status", "deployment/podsnapshot-controller", "--timeout=120s")
	return took
}

// overlay writes a kustomization over dir that sets the controller's storage endpoint to
// fake-gcs-server (the one setting of this test's own), and returns its directory.
func (e *clusterEnv) overlay(name, dir string) string {
	o := filepath.Join(e.dir, name)
	must(e.t, os.MkdirAll(o, 0o755))
	rel, err := filepath.Rel(o, dir) // kustomize refuses an absolute base
	must(e.t, err)
	k := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- %s
patches:
- target: {kind: Deployment, name: podsnapshot-controller}
  patch: |-
    - op: add
      path: /spec/template/spec/containers/0/env
      value: [{name: STORAGE_EMULATOR_HOST, value: %q}]
`, rel, e.gcs.Host)
	must(e.t, os.WriteFile(filepath.Join(o, "kustomization.yaml"), []byte(k), 0o644))
	return o
}

// objectSize returns the size of object in bucket, from its metadata.
func (e *clusterEnv) objectSize(bucket, object string) int64 {
	e.t.Helper()
	resp, err := http.Get(e.gcs.URL + "/storage/v1/b/" + bucket + "/o/" + url.PathEscape(object))
	must(e.t, err)
	defer resp.Body.Close()
	var meta struct {
		Size int64 `json:"size,string"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&meta); err != nil || resp.StatusCode != http.StatusOK || meta.Size == 0 {
		e.t.Fatalf("metadata of gs://%s/%s: %s, %v", bucket, object, resp.Status, err)
	}
	return meta.Size
}

// guidePod is the GKE guide's pod manifest with the image swapped for a local one, and,
// when node is set, pinned to that node.
func guidePod(node string) string {
	pin := ""
	if node != "" {
		pin = "  nodeName: " + node + "\n"
	}
	return `apiVersion: v1
kind: Pod
metadata:
  name: my-pod
  namespace: default
  labels:
    app: my-app
spec:
` + pin + guidePodSpec
}

// guidePodSpec is the spec of the guide's pod (its image swapped), below "spec:".
var guidePodSpec = `  runtimeClassName: gvisor
  containers:
  - name: my-container
    image: ` + guidePythonImage + `
    command: ["python3", "-c"]
    args:
      - |
` + regexp.MustCompile(`(?m)^`).ReplaceAllString(strings.TrimSuffix(testenv.GuideCounterScript, "\n"), "        ") + "\n"

// guideDeployment is a Deployment my-app of the guide's pod template.
func guideDeployment(replicas int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: my-app
  namespace: default
spec:
  replicas: %d
  selector:
    matchLabels: {app: my-app}
  template:
    metadata:
      labels: {app: my-app}
    spec:
`, replicas) + regexp.MustCompile(`(?m)^`).ReplaceAllString(strings.TrimSuffix(guidePodSpec, "\n"), "    ") + "\n"
}

// TestKubeInstallTwoNodes: from two nodes with no podsnapshot parts, `make push` and
// `kubectl apply -k` install it on both (binaries on PATH, containerd serving the
// handler, node labelled) in one bounded wait, and a runc pod running before the install
// keeps running through containerd's restart. The guide's manifests then work unchanged
// (but for the image): the pod checkpoints at 20, the PodSnapshot becomes
// AllSnapshotsAvailable; created again on the other node, whose cache is empty, it
// restores from the bucket (that node reads the pages object once) and counts on from
// 21. A Deployment of the same template scaled from 1 to 4 over both nodes restores
// every replica, no node reading the pages more than once in all. Uninstall leaves
// neither node a binary, drop-in, shim config or label, and the runc pod running.
func TestKubeInstallTwoNodes(t *testing.T) {
	e := newClusterEnv(t, 2)
	n1, n2 := e.kube.Nodes[0], e.kube.Nodes[1]

	// A runc pod running before the install.
	before := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: before, namespace: default}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: %s, imagePullPolicy: Never, command: ["sh", "-c", "exec sleep 3600"]}
`, n1.Name, harness.BusyboxImage)
	if _, err := e.kube.KubectlInput(before, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	e.kubectl("wait", "--for=condition=Ready", "pod/before", "--timeout=90s")
	beforeID := e.kubectl("get", "pod", "before", "-o", "jsonpath={.status.containerStatuses[0].containerID}")

	for _, n := range e.kube.Nodes {
		if _, err := os.Stat(filepath.Join(n.NodeDir("/usr/local/bin"), "runsc")); err == nil {
			t.Fatalf("node %s has runsc before the install", n.Name)
		}
	}

	// make push, kubectl apply -k: both nodes installed and labelled.
	ref := e.push()
	if b, _ := os.ReadFile(filepath.Join(e.deploy, "kustomization.yaml")); !strings.Contains(string(b), "newName: "+strings.TrimSuffix(ref, ":e2e")) {
		t.Fatalf("make push did not set the kustomization's image:\n%s", b)
	}
	t.Logf("kubectl apply -k to both agents ready: %.1fs", e.install().Seconds())
	labels := e.kubectl("get", "nodes", "-L", "podsnapshot.gke.io/ready")
	t.Logf("kubectl get nodes:\n%s", labels)
	for _, n := range e.kube.Nodes {
		if got := e.kubectl("get", "node", n.Name, "-o", `jsonpath={.metadata.labels.podsnapshot\.gke\.io/ready}`); got != "true" {
			t.Fatalf("node %s label podsnapshot.gke.io/ready=%q", n.Name, got)
		}
		for _, b := range []string{"containerd-shim-podsnapshot-v1", "podsnapshot-shimd", "runsc", "podsnapshot"} {
			if _, err := os.Stat(filepath.Join(n.NodeDir("/usr/local/bin"), b)); err != nil {
				t.Fatalf("node %s: %v", n.Name, err)
			}
		}
		if _, err := os.Stat(filepath.Join(n.NodeDir("/etc/containerd"), "conf.d", "podsnapshot-cri.toml")); err != nil {
			t.Fatalf("node %s: %v", n.Name, err)
		}
		if n.ContainerdRestarts() != 1 {
			t.Fatalf("node %s: containerd restarted %d times, want 1", n.Name, n.ContainerdRestarts())
		}
		v, err := exec.Command(filepath.Join(n.NodeDir("/usr/local/bin"), "runsc"), "--version").CombinedOutput()
		if err != nil || strings.Contains(string(v), "VERSION_MISSING") {
			t.Fatalf("installed runsc --version: %v: %s", err, v)
		}
	}
	if id := e.kubectl("get", "pod", "before", "-o", "jsonpath={.status.containerStatuses[0].containerID}"); id != beforeID {
		t.Fatalf("the runc pod's container changed across containerd's restart: %s -> %s", beforeID, id)
	}
	if ready := e.kubectl("get", "pod", "before", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`); ready != "True" {
		t.Fatalf("the runc pod is not Ready after the install: %s", ready)
	}

	// The guide's manifests: storage config, policy (testdata/policies/gke, as written
	// there), the bucket, the pod.
	must(t, e.gcs.CreateBucket(t.Context(), "test", "my-bucket"))
	e.kubectl("apply", "-f", filepath.Join(harness.RepoRoot(t), "testdata", "policies", "gke"))
	for _, n := range e.kube.Nodes {
		mirror := filepath.Join(n.NodeDir("/etc/podsnapshot"), agent.NamespaceFile("default"))
		harness.Eventually(t, 30*time.Second, "the policy mirrored on "+n.Name, func() bool {
			b, _ := os.ReadFile(mirror)
			return strings.Contains(string(b), "example-pod-snapshot-policy")
		})
	}
	if _, err := e.kube.KubectlInput(guidePod(""), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	e.kubectl("wait", "--for=condition=Ready", "pod/my-pod", "--timeout=120s")
	first := e.kubectl("get", "pod", "my-pod", "-o", "jsonpath={.spec.nodeName}")
	other := n2
	if first == n2.Name {
		other = n1
	}
	var uuid string
	harness.Eventually(t, 90*time.Second, "the PodSnapshot AllSnapshotsAvailable", func() bool {
		uuid = uuidRE.FindString(e.kubectl("get", "podsnapshots", "-o", "name"))
		return uuid != "" && e.kubectl("get", "podsnapshot", uuid, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].reason}`) == "AllSnapshotsAvailable"
	})
	harness.Eventually(t, 30*time.Second, "GKE Pod Snapshot: resume in the pod's log", func() bool {
		out, _ := e.kube.Kubectl("logs", "my-pod")
		return strings.Contains(out, "GKE Pod Snapshot: resume")
	})
	t.Logf("kubectl get podsnapshots:\n%s", e.kubectl("get", "podsnapshots"))
	harness.Eventually(t, 30*time.Second, "the checkpoint event", func() bool {
		return strings.Contains(e.kubectl("get", "events", "--field-selector", "involvedObject.name=my-pod"), "Successfully checkpointed the pod to PodSnapshot default/"+uuid)
	})

	// The pod again, on the other node: restored from the bucket.
	cache := filepath.Join(other.NodeDir("/var/lib/podsnapshot"), "cache")
	if ents, _ := os.ReadDir(cache); len(ents) > 0 {
		t.Fatalf("node %s's cache is not empty before its restore: %v", other.Name, ents)
	}
	e.kubectl("delete", "pod", "my-pod", "--wait=true", "--timeout=60s")
	if _, err := e.kube.KubectlInput(guidePod(other.Name), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	e.kubectl("wait", "--for=condition=Ready", "pod/my-pod", "--timeout=120s")
	harness.Eventually(t, 60*time.Second, "GKE Pod Snapshot: restore and Count: 21 on "+other.Name, func() bool {
		out, _ := e.kube.Kubectl("logs", "my-pod")
		return strings.Contains(out, "GKE Pod Snapshot: restore") && regexp.MustCompile(`(?m)^Count: 21$`).MatchString(out) &&
			!regexp.MustCompile(`(?m)^Count: 0$`).MatchString(out)
	})
	harness.Eventually(t, 30*time.Second, "PodRestored and the restore event", func() bool {
		return e.kubectl("get", "pod", "my-pod", "-o", `jsonpath={.status.conditions[?(@.type=="PodRestored")].status}`) == "True" &&
			strings.Contains(e.kubectl("get", "events", "--field-selector", "involvedObject.name=my-pod"), "Successfully restored the pod from PodSnapshot default/"+uuid)
	})
	if ents, _ := os.ReadDir(cache); len(ents) == 0 {
		t.Fatalf("node %s restored without filling its cache from the bucket", other.Name)
	}
	t.Logf("restored on %s (checkpointed on %s):\n%s", other.Name, first, e.kubectl("logs", "my-pod", "--tail=5"))
	pages := "my-folder/default/example-pod-snapshot-policy/" + uuid + "/pages.img.zst"
	size := e.objectSize("my-bucket", pages)
	if got := e.reads.Bytes(other.IP.String(), pages); got != size {
		t.Fatalf("node %s read %d bytes of %s for its restore; want the object once: %d", other.Name, got, pages, size)
	}

	// A Deployment of the same pod template, scaled from 1 to 4 over the two nodes:
	// every replica restores, and no node reads the pages from the bucket more than once
	// in all (its first restore fills its cache, which the later ones and the shims
	// restoring beside it share).
	e.kubectl("delete", "pod", "my-pod", "--wait=true", "--timeout=60s")
	if _, err := e.kube.KubectlInput(guideDeployment(1), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	e.kubectl("rollout", "status", "deployment/my-app", "--timeout=120s")
	e.kubectl("scale", "deployment/my-app", "--replicas=4")
	e.kubectl("rollout", "status", "deployment/my-app", "--timeout=180s")
	placed := map[string]int{}
	for _, line := range strings.Fields(e.kubectl("get", "pods", "-l", "app=my-app", "-o", `jsonpath={range .items[*]}{.metadata.name}={.spec.nodeName}{" "}{end}`)) {
		pod, node, _ := strings.Cut(line, "=")
		placed[node]++
		harness.Eventually(t, 60*time.Second, "replica "+pod+" restored", func() bool {
			out, _ := e.kube.Kubectl("logs", pod)
			return strings.Contains(out, "GKE Pod Snapshot: restore") && !regexp.MustCompile(`(?m)^Count: 0$`).MatchString(out) &&
				e.kubectl("get", "pod", pod, "-o", `jsonpath={.status.conditions[?(@.type=="PodRestored")].status}`) == "True"
		})
	}
	t.Logf("replicas per node: %v", placed)
	if len(placed) != 2 {
		t.Fatalf("the 4 replicas are not on both nodes: %v", placed)
	}
	for _, n := range e.kube.Nodes {
		got := e.reads.Bytes(n.IP.String(), pages)
		t.Logf("node %s read %d of the %d bytes of pages from the bucket in all", n.Name, got, size)
		if got > size {
			t.Fatalf("node %s read %d bytes of pages, more than the object (%d) once", n.Name, got, size)
		}
	}
	e.kubectl("delete", "deployment", "my-app", "--wait=true", "--timeout=60s")
	harness.Eventually(t, 60*time.Second, "the replicas gone", func() bool {
		return strings.TrimSpace(e.kubectl("get", "pods", "-l", "app=my-app", "-o", "name")) == ""
	})

	// Uninstall as the README says: the gVisor pods deleted first (above: the
	// uninstaller refuses while a pod runs under the shim), the install deleted, the
	// uninstall DaemonSet applied and done on every node, then deleted. The runc pod
	// keeps running.
	e.kubectl("delete", "-f", filepath.Join(harness.RepoRoot(t), "testdata", "policies", "gke"))
	// While the controller runs: its finalizer deletes each snapshot's files first.
	e.kubectl("delete", "podsnapshots", "--all", "-A", "--wait=true", "--timeout=60s")
	e.kubectl("delete", "-k", e.overlay("overlay", e.deploy), "--wait=true", "--timeout=120s")
	begin := time.Now()
	e.kubectl("apply", "-k", filepath.Join(e.deploy, "uninstall"))
	if out, err := e.kube.Kubectl("-n", "podsnapshot-uninstall", "rollout", "status", "daemonset/podsnapshot-uninstall", "--timeout=180s"); err != nil {
		logs, _ := e.kube.Kubectl("-n", "podsnapshot-uninstall", "logs", "-l", "app.kubernetes.io/name=podsnapshot-uninstall", "-c", "uninstall", "--tail=50")
		t.Fatalf("%v\n%s\nuninstall logs:\n%s", err, out, logs)
	}
	t.Logf("uninstall done on every node in %.1fs", time.Since(begin).Seconds())
	e.kubectl("delete", "-k", filepath.Join(e.deploy, "uninstall"), "--wait=true", "--timeout=120s")
	for _, n := range e.kube.Nodes {
		for _, p := range []string{
			filepath.Join(n.NodeDir("/usr/local/bin"), "containerd-shim-podsnapshot-v1"),
			filepath.Join(n.NodeDir("/usr/local/bin"), "podsnapshot-shimd"),
			filepath.Join(n.NodeDir("/usr/local/bin"), "runsc"),
			filepath.Join(n.NodeDir("/usr/local/bin"), "podsnapshot"),
			filepath.Join(n.NodeDir("/etc/containerd"), "conf.d", "podsnapshot-cri.toml"),
			filepath.Join(n.NodeDir("/etc/containerd"), "podsnapshot.toml"),
		} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("node %s: %s left after the uninstall", n.Name, p)
			}
		}
		if got := e.kubectl("get", "node", n.Name, "-o", `jsonpath={.metadata.labels.podsnapshot\.gke\.io/ready}`); got != "" {
			t.Errorf("node %s still labelled ready=%q", n.Name, got)
		}
		if n.ContainerdRestarts() != 2 {
			t.Errorf("node %s: containerd restarted %d times in all, want 2 (install, uninstall)", n.Name, n.ContainerdRestarts())
		}
	}
	if id := e.kubectl("get", "pod", "before", "-o", "jsonpath={.status.containerStatuses[0].containerID}"); id != beforeID {
		t.Fatalf("the runc pod's container changed across the uninstall: %s -> %s", beforeID, id)
	}
}
