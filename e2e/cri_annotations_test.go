package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
)

// TestCRIPodGVisorAnnotations: of the dev.gvisor.* annotations a pod sets (CRI passes
// them all, on the sandbox and on its containers), runsc gets only the mount hints of
// the pod's volumes and the emptyDir opt-out; sandbox-level keys (root file system
// hints, the root file system layer, flag overrides, internal keys, the sandbox's
// cgroup) are dropped by the shim with one warning line naming them, and the pod runs.
func TestCRIPodGVisorAnnotations(t *testing.T) {
	e := newCRIEnv(t, noStore)
	logDir, shared := t.TempDir(), t.TempDir()
	refused := map[string]string{
		"dev.gvisor.spec.rootfs.overlay":      "memory",
		"dev.gvisor.spec.rootfs.source":       "/etc",
		"dev.gvisor.spec.rootfs.type":         "erofs",
		"dev.gvisor.spec.cgroup-parent":       "/",
		"dev.gvisor.flag.something":           "true",
		"dev.gvisor.flag.debug":               "true",
		"dev.gvisor.internal.x":               "1",
		"dev.gvisor.internal.checkpoint.path": "/etc",
		"dev.gvisor.tar.rootfs.upper":         "/etc/shadow",
		"dev.gvisor.tar.rootfs.upper.main":    "/etc/shadow",
	}
	allowed := map[string]string{
		"dev.gvisor.spec.mount.shared.source":     shared,
		"dev.gvisor.spec.mount.shared.type":       "bind",
		"dev.gvisor.spec.mount.shared.share":      "shared",
		"dev.gvisor.empty-dir.cache.force-shared": "true",
	}
	podAnn := map[string]string{}
	for k, v := range refused {
		podAnn[k] = v
	}
	for k, v := range allowed {
		podAnn[k] = v
	}
	pod := harness.PodConfig{
		Metadata:     harness.PodMetadata{Name: "annotated", Namespace: "default", UID: "5f2a9c1e-3b7d-4e8a-9c0f-1d2e3f4a5b6c"},
		Hostname:     "annotated",
		LogDirectory: logDir,
		Annotations:  podAnn,
		Linux:        &harness.PodLinux{CgroupParent: cgroupParent(t, "/podsnapshot-e2e-"+filepath.Base(e.cd.Dir))},
	}
	podFile := pod.Write(t)
	podID := strings.TrimSpace(e.cd.MustCrictl(t, "runp", "--runtime", harness.RuntimeHandler, podFile))
	t.Cleanup(func() {
		e.cd.Crictl(t, "stopp", podID)
		e.cd.Crictl(t, "rmp", podID)
	})
	main := e.createContainer(podID, podFile, harness.ContainerConfig{
		Metadata: harness.ContainerMetadata{Name: "main"},
		Image:    harness.ImageSpec{Image: harness.BusyboxImage},
		Command:  []string{"sh", "-c", "exec sleep 3600"},
		Mounts:   []harness.Mount{{ContainerPath: "/shared", HostPath: shared}},
		Annotations: map[string]string{
			"dev.gvisor.spec.rootfs.overlay": "self",
			"dev.gvisor.flag.something":      "false",
			"dev.gvisor.internal.x":          "2",
			"dev.gvisor.tar.rootfs.upper":    "/etc/passwd",
		},
		LogPath: "main.log",
	})
	if st := containerState(e, main); st != "CONTAINER_RUNNING" {
		t.Fatalf("container %s is %s after crictl start", main, st)
	}
	// What runsc holds: `runsc state` prints the annotations of the spec runsc read.
	for _, id := range []string{podID, main} {
		ann := runscAnnotations(t, filepath.Join(e.runscRoot, "k8s.io"), id)
		for k := range refused {
			if v, ok := ann[k]; ok {
				t.Errorf("%s: runsc has the pod's annotation %s=%q, which the shim must drop", id, k, v)
			}
		}
		for k, v := range ann {
			if strings.HasPrefix(k, "dev.gvisor.") && allowed[k] != v {
				t.Errorf("%s: runsc has annotation %s=%q the pod may not set", id, k, v)
			}
		}
		for k, v := range allowed {
			if ann[k] != v {
				t.Errorf("%s: runsc has %s=%q, want the pod's %q", id, k, ann[k], v)
			}
		}
		line := e.logLine(id, "ignored annotations")
		for _, k := range []string{"dev.gvisor.spec.rootfs.overlay", "dev.gvisor.flag.something", "dev.gvisor.internal.x", "dev.gvisor.tar.rootfs.upper"} {
			if !strings.Contains(line, k) {
				t.Errorf("%s: the shim's warning line %q does not name %s", id, line, k)
			}
		}
	}
	// The pod works with its allowed hint: the container writes the host directory.
	e.cd.MustCrictl(t, "exec", "-s", main, "sh", "-c", "echo ok > /shared/f")
	if out := e.cd.MustCrictl(t, "exec", main, "cat", "/shared/f"); strings.TrimSpace(out) != "ok" {
		t.Fatalf("read back %q from the shared volume", out)
	}
}

// runscAnnotations returns the annotations of container id's spec as runsc holds it
// (`runsc --root root state id`).
func runscAnnotations(t *testing.T, root, id string) map[string]string {
	t.Helper()
	out, err := exec.Command(filepath.Join(harness.DepsBin(t), "runsc"), "--root", root, "state", id).Output()
	if err != nil {
		t.Fatalf("runsc state %s: %v", id, err)
	}
	var st struct {
		Annotations map[string]string `json:"annotations"`
	}
	must(t, json.Unmarshal(out, &st))
	return st.Annotations
}
