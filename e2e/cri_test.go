package e2e

import (
	"encoding/json"
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

	"github.com/podsnapshot/podsnapshot/deploy"
	"github.com/podsnapshot/podsnapshot/e2e/harness"
)

// Kubernetes pods through CRI: containerd's CRI plugin with the podsnapshot runtime
// handler, driven by crictl as the kubelet would drive it.

// TestCRIPlainPod runs a pod that no policy matches: the pause sandbox and two busybox
// containers share one shim and one runsc sandbox, a host-path volume and the pod's
// network (an address from the CNI bridge's subnet, reachable from the host). Stopping
// and removing the pod leaves no process behind.
func TestCRIPlainPod(t *testing.T) {
	e := newCRIEnv(t, noStore)
	logDir, shared := t.TempDir(), t.TempDir()
	pod := harness.PodConfig{
		Metadata:     harness.PodMetadata{Name: "plain", Namespace: "default", UID: "7c0d3f8e-0b6a-4b7e-9d1e-2f5a6c4b3a21"},
		Hostname:     "plain",
		LogDirectory: logDir,
		Labels:       map[string]string{"app": "plain"},
		Linux:        &harness.PodLinux{CgroupParent: cgroupParent(t, "/podsnapshot-e2e-"+filepath.Base(e.cd.Dir))},
	}
	podFile := pod.Write(t)
	podID := strings.TrimSpace(e.cd.MustCrictl(t, "runp", "--runtime", harness.RuntimeHandler, podFile))
	removed := false
	t.Cleanup(func() {
		if !removed { // a failed test still stops its pod, so cleanup finds no leak of its own making
			e.cd.Crictl(t, "stopp", podID)
			e.cd.Crictl(t, "rmp", podID)
		}
	})
	if line := e.decision(podID); !strings.Contains(line, "plain runsc") {
		t.Fatalf("decision for a pod without policy: %q", line)
	}

	web := e.createContainer(podID, podFile, harness.ContainerConfig{
		Metadata: harness.ContainerMetadata{Name: "web"},
		Image:    harness.ImageSpec{Image: harness.BusyboxImage},
		Command:  []string{"httpd", "-f", "-p", "8080", "-h", "/shared"},
		Mounts:   []harness.Mount{{ContainerPath: "/shared", HostPath: shared}},
		LogPath:  "web.log",
	})
	writer := e.createContainer(podID, podFile, harness.ContainerConfig{
		Metadata: harness.ContainerMetadata{Name: "writer"},
		Image:    harness.ImageSpec{Image: harness.BusyboxImage},
		Command:  []string{"sh", "-c", "echo writer started; exec sleep 3600"},
		Mounts:   []harness.Mount{{ContainerPath: "/data", HostPath: shared}},
		LogPath:  "writer.log",
	})
	for _, id := range []string{web, writer} {
		if st := containerState(e, id); st != "CONTAINER_RUNNING" {
			t.Fatalf("container %s is %s after crictl start", id, st)
		}
	}

	// Both containers run in the pod: an exec in each, through the shared volume.
	e.cd.MustCrictl(t, "exec", "-s", writer, "sh", "-c", "echo hello-from-writer > /data/index.html")
	if out := e.cd.MustCrictl(t, "exec", web, "cat", "/shared/index.html"); strings.TrimSpace(out) != "hello-from-writer" {
		t.Fatalf("the web container reads %q from the shared volume, want hello-from-writer", out)
	}
	harness.WaitForOutput(t, filepath.Join(logDir, "writer.log"), "writer started", 30*time.Second)

	// The pod's address is from the bridge's subnet, and the host reaches the pod there.
	ip := podIP(e, podID)
	if !e.net.Subnet.Contains(ip) || ip.Equal(e.net.Gateway) {
		t.Fatalf("pod IP %s, want one in %s other than the gateway %s", ip, e.net.Subnet, e.net.Gateway)
	}
	url := fmt.Sprintf("http://%s/index.html", net.JoinHostPort(ip.String(), "8080"))
	var body string
	harness.Eventually(t, 30*time.Second, "GET "+url+" answers hello-from-writer", func() bool {
		body = httpGet(url)
		return strings.TrimSpace(body) == "hello-from-writer"
	})

	// One shim and one runsc sandbox serve the whole pod.
	procs, err := harness.FindProcesses([]string{e.runscRoot, e.cd.Dir})
	must(t, err)
	var shims, sandboxes int
	for _, p := range procs {
		switch filepath.Base(p.Cmdline[0]) {
		case harness.ShimBinary:
			shims++
		case "runsc-sandbox":
			sandboxes++
		}
	}
	if shims != 1 || sandboxes != 1 {
		t.Fatalf("want 1 shim and 1 sandbox for the pod, found %d and %d:\n%v", shims, sandboxes, procs)
	}

	e.cd.MustCrictl(t, "stopp", podID)
	e.cd.MustCrictl(t, "rmp", podID)
	removed = true
	if out := e.cd.MustCrictl(t, "pods", "-q"); strings.TrimSpace(out) != "" {
		t.Fatalf("pods left after rmp: %s", out)
	}
	harness.Eventually(t, 15*time.Second, "no process of the pod left", func() bool {
		procs, err := harness.FindProcesses([]string{e.runscRoot, e.cd.Dir})
		return err == nil && len(procs) == 0
	})
}

// TestCRIShippedConfig: containerd v2.4 imports deploy/containerd/podsnapshot-cri.toml
// from a config of its own version without a warning beyond the version migration, and
// the podsnapshot handler arrives as shipped (`containerd config dump` starts nothing).
func TestCRIShippedConfig(t *testing.T) {
	dir := t.TempDir()
	shipped := filepath.Join(harness.RepoRoot(t), "deploy", "containerd", "podsnapshot-cri.toml")
	main := filepath.Join(dir, "config.toml")
	must(t, os.WriteFile(main, []byte(fmt.Sprintf("version = 4\nimports = [%q]\n", shipped)), 0o644))
	cmd := exec.Command(harness.Binary(t, "containerd", ""), "--config", main, "config", "dump")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("containerd config dump: %v\n%s", err, stderr.String())
	}
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if line != "" && !strings.Contains(line, "Configuration migrated from version 3") {
			t.Errorf("containerd: %s", line)
		}
	}
	rt, err := deploy.Runtime()
	must(t, err)
	for _, want := range []string{
		"[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.podsnapshot]",
		fmt.Sprintf("runtime_type = '%s'", rt.RuntimeType),
		"pod_annotations = ['dev.gvisor.*', 'podsnapshot.gke.io/*']",
		"container_annotations = ['dev.gvisor.*', 'podsnapshot.gke.io/*']",
		fmt.Sprintf("ConfigPath = '%s'", rt.Options.ConfigPath),
		// Imports add to containerd's defaults rather than replacing them.
		"[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("containerd's view of the shipped config lacks %q:\n%s", want, out)
		}
	}
}

// createContainer creates and starts a container in pod podID (crictl create and start)
// and returns its ID.
func (e *env) createContainer(podID, podFile string, c harness.ContainerConfig) string {
	e.t.Helper()
	id := strings.TrimSpace(e.cd.MustCrictl(e.t, "create", podID, c.Write(e.t), podFile))
	e.cd.MustCrictl(e.t, "start", id)
	return id
}

// containerState returns the CRI state of container id (CONTAINER_RUNNING, ...).
func containerState(e *env, id string) string {
	e.t.Helper()
	var v struct {
		Status struct{ State string } `json:"status"`
	}
	must(e.t, json.Unmarshal([]byte(e.cd.MustCrictl(e.t, "inspect", "-o", "json", id)), &v))
	return v.Status.State
}

// podIP returns the pod's IP address as CRI reports it.
func podIP(e *env, podID string) net.IP {
	e.t.Helper()
	var v struct {
		Status struct {
			Network struct{ IP string } `json:"network"`
		} `json:"status"`
	}
	out := e.cd.MustCrictl(e.t, "inspectp", "-o", "json", podID)
	must(e.t, json.Unmarshal([]byte(out), &v))
	ip := net.ParseIP(v.Status.Network.IP)
	if ip == nil {
		e.t.Fatalf("crictl inspectp %s: no pod IP in\n%s", podID, out)
	}
	return ip
}

// httpGet returns the body of url, or "" on any error.
func httpGet(url string) string {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	return string(b)
}

// cgroupParent returns parent, a pod cgroup of this test's own (cgroupfs form, such as
// /podsnapshot-e2e-psn-123/pod-UID), as the kubelet gives each pod one. At cleanup it
// removes the directories left for it in each cgroup v1 hierarchy (empty once the pod is
// gone), and then its ancestors as far as they are empty (another pod's may still be
// in use).
func cgroupParent(t *testing.T, parent string) string {
	t.Cleanup(func() {
		hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
		for _, h := range hierarchies {
			if st, err := os.Stat(h); err != nil || !st.IsDir() {
				continue
			}
			for p := parent; p != "/" && p != "."; p = filepath.Dir(p) {
				err := os.Remove(filepath.Join(h, p))
				if err != nil && p == parent && !os.IsNotExist(err) {
					t.Errorf("remove pod cgroup %s: %v", filepath.Join(h, p), err)
				}
				if err != nil && !os.IsNotExist(err) {
					break // not empty: still in use
				}
			}
		}
	})
	return parent
}
