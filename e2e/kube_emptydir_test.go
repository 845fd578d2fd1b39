package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/agent"
	"github.com/podsnapshot/podsnapshot/internal/testenv/kube"
)

// emptyDirWriter fills the pod's emptyDir /data with 64 MiB of random files and a marker
// once its sidecar is up (it touches /data/side-ready), prints their sha256 sums, then
// copies the marker into its root file system (/marker-rootfs), asks for a checkpoint and
// sleeps. A pod restored from a whole-pod snapshot goes on after the checkpoint; one that
// starts on a rootfs-only snapshot's files finds /marker-rootfs and only sleeps.
const emptyDirWriter = `if [ -e /marker-rootfs ]; then echo "root file system kept"; exec sleep 3600; fi
while [ ! -e /data/side-ready ]; do sleep 0.1; done
mkdir -p /data/files
for i in 1 2 3 4; do head -c 16777216 /dev/urandom > /data/files/f$i; done
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > /data/marker
cp /data/marker /marker-rootfs
head -c 4194304 /dev/urandom > /mem/small
if head -c 16777216 /dev/urandom > /mem/big 2>/dev/null; then echo "mem: past sizeLimit"; else echo "mem: sizeLimit held"; fi; rm -f /mem/big
echo "sums:"; sha256sum /data/files/* /data/marker /mem/small
exec 3<>/proc/gvisor/checkpoint; echo 1 >&3; read -r r <&3; exec 3>&-
echo "checkpoint result: ${r:-error}"
exec sleep 3600`

// emptyDirPod is a pod of two containers (main runs script, side marks itself ready and
// sleeps) sharing an emptyDir "data" at /data and an emptyDir "mem" of medium Memory and
// sizeLimit 8Mi at /mem, with no annotations.
func (k *kubeEnv) emptyDirPod(name, app, script string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: test
  labels: {app: %s}
spec:
  nodeName: %s
  runtimeClassName: %s
  terminationGracePeriodSeconds: 1
  volumes:
  - name: data
    emptyDir: {}
  - name: mem
    emptyDir: {medium: Memory, sizeLimit: 8Mi}
  containers:
  - name: main
    image: %s
    imagePullPolicy: Never
    command: ["sh", "-c", %q]
    volumeMounts: [{name: data, mountPath: /data}, {name: mem, mountPath: /mem}]
  - name: side
    image: %s
    imagePullPolicy: Never
    command: ["sh", "-c", "touch /data/side-ready; exec sleep 3600"]
    volumeMounts: [{name: data, mountPath: /data}, {name: mem, mountPath: /mem}]
`, name, app, k.kube.NodeName, kube.RuntimeClass, harness.BusyboxImage, script, harness.BusyboxImage)
}

// sums returns `sha256sum` of the emptyDir's files as seen by container c of pod name,
// one "sum path" line each, sorted.
func (k *kubeEnv) sums(name, c string) string {
	k.t.Helper()
	out := k.kubectl("-n", "test", "exec", name, "-c", c, "--", "sh", "-c", "sha256sum /data/files/* /data/marker /mem/small")
	return sortedLines(out)
}

func sortedLines(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

var sumLine = regexp.MustCompile(`(?m)^[0-9a-f]{64}  /(data|mem)/\S+$`)

// emptyDirHostFiles lists what the node's directory of pod name's emptyDir "data" holds.
func (k *kubeEnv) emptyDirHostFiles(name string) []string {
	k.t.Helper()
	uid := k.jsonpath("pod", "-n", "test", name, "-o", "jsonpath={.metadata.uid}")
	dir := k.hostPath(filepath.Join("/var/lib/kubelet/pods", uid, "volumes/kubernetes.io~empty-dir/data"))
	entries, err := os.ReadDir(dir)
	if err != nil {
		k.t.Fatalf("the node's directory of pod %s's emptyDir: %v", name, err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestKubeEmptyDir (issue 25, must-show 1): under a whole-pod policy, a pod's emptyDir
// (no annotations) is inside the sandbox: 64 MiB of files and a marker written there are
// in the snapshot, not in the node's directory, and the restored pod finds them byte for
// byte, in both of its containers. The same pod under no policy keeps a plain host
// directory. Under a rootfs-only policy the emptyDir stays a host directory too, outside
// the snapshot: the next pod finds the root file system's files and an empty emptyDir.
func TestKubeEmptyDir(t *testing.T) {
	k := newInstalledKubeEnv(t, localStore)
	storePath := strings.TrimPrefix(k.storeURL, "file://")
	rootfsPolicy := strings.NewReplacer("example-pod-snapshot-policy", "rootfs-policy", "app: my-app", "app: rootfs",
		"  triggerConfig:\n", "  snapshotScope: rootfs-only\n  triggerConfig:\n").Replace(guidePolicy)
	k.apply(guideStorageConfig(storePath) + "---\n" + guidePolicy + "---\n" + rootfsPolicy)
	harness.Eventually(t, 15*time.Second, "both policies on the node", func() bool {
		b, _ := os.ReadFile(filepath.Join(k.policyDir, agent.NamespaceFile("test")))
		return strings.Contains(string(b), "rootfs-policy") && strings.Contains(string(b), "example-pod-snapshot-policy")
	})

	// 1. Whole pod: written, checkpointed; both containers see the same files; the node's
	// directory holds only runsc's filestore.
	k.apply(k.emptyDirPod("writer", "my-app", emptyDirWriter))
	var logs string
	harness.Eventually(t, 2*time.Minute, "the writer's checkpoint", func() bool {
		logs, _ = k.kube.Kubectl("-n", "test", "logs", "writer", "-c", "main")
		return strings.Contains(logs, "checkpoint result: ")
	})
	if !strings.Contains(logs, "checkpoint result: resume") || !strings.Contains(logs, "mem: sizeLimit held") {
		t.Fatalf("the writer's log:\n%s", logs)
	}
	before := sortedLines(strings.Join(sumLine.FindAllString(logs, -1), "\n"))
	if strings.Count(before, "\n") != 5 {
		t.Fatalf("the writer printed no sums of its six files:\n%s", logs)
	}
	for _, c := range []string{"main", "side"} {
		if got := k.sums("writer", c); got != before {
			t.Fatalf("container %s sees other files in the emptyDir before the checkpoint:\n%s\nwant\n%s", c, got, before)
		}
	}
	for _, f := range k.emptyDirHostFiles("writer") {
		if !strings.HasPrefix(f, ".gvisor.filestore.") {
			t.Fatalf("the emptyDir's node directory holds %q: its files are not inside the sandbox", f)
		}
	}
	if line := k.logLine(k.sandboxID("test", "writer"), "emptyDir volumes data, mem inside the sandbox"); line == "" {
		t.Fatalf("no log line says the emptyDir went inside the sandbox")
	}
	uuid := uuidRE.FindString(k.jsonpath("podsnapshots", "-n", "test", "-o", "name"))
	harness.Eventually(t, 90*time.Second, "the writer's PodSnapshot AllSnapshotsAvailable", func() bool {
		return uuid != "" && k.jsonpath("podsnapshot", "-n", "test", uuid, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].reason}`) == "AllSnapshotsAvailable"
	})
	m, err := k.repo.Get(t.Context(), "test", "example-pod-snapshot-policy", uuid)
	must(t, err)
	raw, stored := m.Sizes()
	if raw < 64<<20 {
		t.Fatalf("snapshot %s holds %d bytes, less than the emptyDir's 64 MiB", uuid, raw)
	}
	t.Logf("snapshot %s with the emptyDir: %d bytes, %d stored", uuid, raw, stored)
	k.kubectl("-n", "test", "delete", "pod", "writer", "--wait=true", "--timeout=60s")

	// 2. Restored: both containers find the files byte for byte.
	k.apply(k.emptyDirPod("writer", "my-app", emptyDirWriter))
	k.waitReady("test", "writer", 2*time.Minute)
	k.waitEvent("test", "writer", "Successfully restored the pod from PodSnapshot test/"+uuid, 30*time.Second)
	for _, c := range []string{"main", "side"} {
		if got := k.sums("writer", c); got != before {
			t.Fatalf("container %s of the restored pod sees other files in the emptyDir:\n%s\nwant\n%s", c, got, before)
		}
	}
	harness.Eventually(t, 30*time.Second, "the restored writer goes on after its checkpoint", func() bool {
		logs, _ = k.kube.Kubectl("-n", "test", "logs", "writer", "-c", "main")
		return strings.Contains(logs, "checkpoint result: restore")
	})
	k.kubectl("-n", "test", "delete", "pod", "writer", "--wait=true", "--timeout=60s")

	// 3. No policy: the emptyDir is the node's directory, as before.
	k.apply(k.emptyDirPod("plain", "no-policy", "echo hello > /data/hello; exec sleep 3600"))
	k.waitReady("test", "plain", 90*time.Second)
	harness.Eventually(t, 15*time.Second, "the plain pod's file in the node's directory", func() bool {
		files := strings.Join(k.emptyDirHostFiles("plain"), " ")
		return strings.Contains(files, "hello") && strings.Contains(files, "side-ready") && !strings.Contains(files, ".gvisor.filestore.")
	})
	if line := k.decision(k.sandboxID("test", "plain")); !strings.Contains(line, "plain runsc") {
		t.Fatalf("the pod under no policy: %q", line)
	}
	k.kubectl("-n", "test", "delete", "pod", "plain", "--wait=true", "--timeout=60s")

	// 4. rootfs-only: the emptyDir stays the node's directory and is not saved; the root
	// file system's file is.
	k.apply(k.emptyDirPod("layer", "rootfs", emptyDirWriter))
	harness.Eventually(t, 2*time.Minute, "the rootfs-only pod's checkpoint", func() bool {
		logs, _ = k.kube.Kubectl("-n", "test", "logs", "layer", "-c", "main")
		return strings.Contains(logs, "checkpoint result: ")
	})
	if !strings.Contains(logs, "checkpoint result: resume") {
		t.Fatalf("the rootfs-only pod's log:\n%s", logs)
	}
	if files := strings.Join(k.emptyDirHostFiles("layer"), " "); !strings.Contains(files, "files") || !strings.Contains(files, "marker") {
		t.Fatalf("the rootfs-only pod's emptyDir is not the node's directory: it holds %q", files)
	}
	marker := k.kubectl("-n", "test", "exec", "layer", "-c", "main", "--", "cat", "/marker-rootfs")
	harness.Eventually(t, 90*time.Second, "the rootfs-only snapshot committed", func() bool {
		return strings.Contains(k.jsonpath("podsnapshots", "-n", "test", "-o", `jsonpath={range .items[*]}{.status.snapshotScope}/{.status.conditions[?(@.type=="Ready")].reason}{"\n"}{end}`),
			"rootfs-only/AllSnapshotsAvailable")
	})
	k.kubectl("-n", "test", "delete", "pod", "layer", "--wait=true", "--timeout=60s")
	k.apply(k.emptyDirPod("layer", "rootfs", emptyDirWriter))
	k.waitReady("test", "layer", 90*time.Second)
	harness.Eventually(t, 30*time.Second, "the next rootfs-only pod starts on the saved root file system", func() bool {
		logs, _ = k.kube.Kubectl("-n", "test", "logs", "layer", "-c", "main")
		return strings.Contains(logs, "root file system kept")
	})
	if got := k.kubectl("-n", "test", "exec", "layer", "-c", "main", "--", "cat", "/marker-rootfs"); got != marker {
		t.Fatalf("the next rootfs-only pod's root file system: /marker-rootfs %q, want %q", got, marker)
	}
	if got := k.kubectl("-n", "test", "exec", "layer", "-c", "main", "--", "ls", "-A", "/data"); strings.TrimSpace(got) != "side-ready" {
		t.Fatalf("the next rootfs-only pod's emptyDir holds %q, want only its sidecar's side-ready", got)
	}
}
