package e2e

import (
	"bufio"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/storage"
)

// hardenPrivStore is the local store of hardenAgentPrivileges, on the node: below
// /var/lib/podsnapshot, which the agent mounts.
const hardenPrivStore = "/var/lib/podsnapshot/harden-priv-store"

// hardenAgentPrivileges checks the agent's privileges as the shipped DaemonSet gives them
// on an installed one-node cluster (issue 27 item 8), in about 15-30 s (a pod, a manual
// checkpoint into a local store and its deletion):
//   - the agent process (podsnapshot-agent --role=agent) has no capability: CapEff,
//     CapPrm, CapInh, CapAmb and the bounding set CapBnd are 0, and NoNewPrivs is 1;
//   - of /run/containerd its mount namespace has only containerd's socket: a mount at
//     /run/containerd/containerd.sock, none at /run/containerd or elsewhere below it, and
//     its /run/containerd lists containerd.sock alone (no shim sockets s/, no bundles);
//   - its /healthz/containerd check answers ok at the node's IP port 9809;
//   - what the agent does with files still works without capabilities: a manual trigger
//     on a pod of a manual policy with a local store completes (PodSnapshot Ready), and
//     kubectl delete podsnapshot has the agent delete the snapshot's files the shim
//     wrote as root (the store no longer has it).
//
// It deletes what it creates: namespace harden-priv, the storage config
// harden-priv-local and the store's directory.
func (k *kubeEnv) hardenAgentPrivileges() {
	t := k.t
	t.Helper()
	var pid int
	for _, p := range k.node.Processes() {
		if len(p.Cmdline) > 0 && filepath.Base(p.Cmdline[0]) == "podsnapshot-agent" && slices.Contains(p.Cmdline, "--role=agent") {
			pid = p.PID
		}
	}
	if pid == 0 {
		t.Fatalf("no podsnapshot-agent --role=agent process on %s", k.node.Name)
	}
	proc := filepath.Join("/proc", strconv.Itoa(pid))

	status, err := os.ReadFile(filepath.Join(proc, "status"))
	must(t, err)
	fields := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		if key, v, ok := strings.Cut(line, ":"); ok {
			fields[key] = strings.TrimSpace(v)
		}
	}
	for _, key := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		if v, err := strconv.ParseUint(fields[key], 16, 64); err != nil || v != 0 {
			t.Errorf("agent (pid %d) %s = %q, want 0 (no capability)", pid, key, fields[key])
		}
	}
	if fields["NoNewPrivs"] != "1" {
		t.Errorf("agent (pid %d) NoNewPrivs = %q, want 1 (allowPrivilegeEscalation: false)", pid, fields["NoNewPrivs"])
	}

	mi, err := os.Open(filepath.Join(proc, "mountinfo"))
	must(t, err)
	defer mi.Close()
	var socket bool
	sc := bufio.NewScanner(mi)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		switch mp := f[4]; {
		case mp == "/run/containerd/containerd.sock":
			socket = true
		case mp == "/run/containerd" || strings.HasPrefix(mp, "/run/containerd/"):
			t.Errorf("agent mount %s: only containerd's socket should be mounted from /run/containerd (%s)", mp, sc.Text())
		}
	}
	must(t, sc.Err())
	if !socket {
		t.Errorf("agent: no mount at /run/containerd/containerd.sock")
	}
	if _, err := os.Stat(filepath.Join(proc, "root/run/containerd/s")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("agent sees /run/containerd/s (the shims' sockets): %v", err)
	}
	if names, err := os.ReadDir(filepath.Join(proc, "root/run/containerd")); err != nil || len(names) != 1 || names[0].Name() != "containerd.sock" {
		t.Errorf("agent's /run/containerd: %v %v, want containerd.sock alone", names, err)
	}
	if code, body, err := hostGet("http://"+net.JoinHostPort(k.node.IP.String(), "9809")+"/healthz/containerd", ""); err != nil || code != http.StatusOK {
		t.Errorf("agent /healthz/containerd: %d %q %v, want 200", code, body, err)
	}

	// A manual trigger and the deletion of its local snapshot, without capabilities.
	t.Cleanup(func() {
		k.kube.Kubectl("delete", "namespace", "harden-priv", "--wait=true", "--timeout=60s")
		k.kube.Kubectl("delete", "podsnapshotstorageconfig", "harden-priv-local", "--ignore-not-found")
		os.RemoveAll(k.hostPath(hardenPrivStore))
	})
	k.createNamespace("harden-priv")
	k.apply(`apiVersion: podsnapshot.gke.io/v1alpha1
kind: PodSnapshotStorageConfig
metadata:
  name: harden-priv-local
spec:
  snapshotStorageConfig:
    local:
      path: "` + hardenPrivStore + `"
---
apiVersion: podsnapshot.gke.io/v1alpha1
kind: PodSnapshotPolicy
metadata:
  name: harden-priv-policy
  namespace: harden-priv
spec:
  storageConfigName: harden-priv-local
  selector:
    matchLabels: {app: harden-priv}
  triggerConfig:
    type: manual
`)
	harness.Eventually(t, 30*time.Second, "the policy harden-priv-policy mirrored into the node's policy_dir", func() bool {
		found := false
		filepath.WalkDir(k.policyDir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), "harden-priv-policy") {
					found = true
				}
			}
			return nil
		})
		return found
	})
	k.apply(k.kubePod("worker", "harden-priv", map[string]string{"app": "harden-priv"}, `i=0; while :; do i=$((i+1)); echo "worker $i"; sleep 0.5; done`))
	k.waitReady("harden-priv", "worker", 90*time.Second)
	k.apply(`apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotManualTrigger
metadata:
  name: harden-priv-trigger
  namespace: harden-priv
spec:
  targetPod: worker
`)
	reason := func() string {
		return k.jsonpath("podsnapshotmanualtrigger", "-n", "harden-priv", "harden-priv-trigger", "-o", `jsonpath={.status.conditions[?(@.type=="Triggered")].reason}`)
	}
	harness.Eventually(t, 90*time.Second, "harden-priv-trigger Complete", func() bool {
		if r := reason(); r == "Failed" {
			t.Fatalf("trigger failed: %s", k.jsonpath("podsnapshotmanualtrigger", "-n", "harden-priv", "harden-priv-trigger", "-o", `jsonpath={.status.conditions[?(@.type=="Triggered")].message}`))
		}
		return reason() == "Complete"
	})
	uuid := k.jsonpath("podsnapshotmanualtrigger", "-n", "harden-priv", "harden-priv-trigger", "-o", "jsonpath={.status.snapshotCreated.name}")
	if !uuidRE.MatchString(uuid) {
		t.Fatalf("harden-priv-trigger snapshotCreated %q", uuid)
	}
	harness.Eventually(t, 30*time.Second, "the PodSnapshot Ready", func() bool {
		return k.jsonpath("podsnapshot", "-n", "harden-priv", uuid, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].reason}`) == "AllSnapshotsAvailable"
	})
	st, err := storage.Open(t.Context(), "file://"+k.hostPath(hardenPrivStore))
	must(t, err)
	defer st.Close()
	r := &repo.Repo{Store: st}
	if _, err := r.Get(t.Context(), "harden-priv", "harden-priv-policy", uuid); err != nil {
		t.Fatalf("snapshot %s not in the local store: %v", uuid, err)
	}
	k.kubectl("-n", "harden-priv", "delete", "pod", "worker", "--wait=true", "--timeout=60s")
	k.kubectl("-n", "harden-priv", "delete", "podsnapshot", uuid, "--wait=true", "--timeout=60s")
	if _, err := r.Get(t.Context(), "harden-priv", "harden-priv-policy", uuid); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("snapshot %s still in the local store after kubectl delete podsnapshot: %v", uuid, err)
	}
	objs, err := st.List(t.Context(), "harden-priv/harden-priv-policy/"+uuid+"/")
	must(t, err)
	if len(objs) != 0 {
		t.Errorf("files of the deleted snapshot left in the local store: %v", objs)
	}
}
