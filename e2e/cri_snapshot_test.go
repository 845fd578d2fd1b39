package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/config"
	"github.com/podsnapshot/podsnapshot/internal/report"
)

// Pod snapshots through CRI: a pod of two containers sharing an emptyDir, matched by the
// workload policy my-app, checkpoints itself; the same pod again is restored, container
// by container, as kubelet creates them.

// criPod is one pod run with crictl, as kubelet would run it.
type criPod struct {
	e        *env
	name     string
	uid      string
	id       string // sandbox ID
	file     string // the pod config, for crictl create
	logDir   string
	cgroup   string
	emptyDir string // the emptyDir volume "data" on the host
	removed  bool
}

// The pod's writer and server containers: the writer fills the emptyDir and triggers the
// checkpoint once the server (busybox httpd on :8080 over the emptyDir, and a counter in
// memory) is up; both print counters that continue after a restore. The writer probes
// /proc/gvisor/checkpoint in a subshell first: a failed `exec` redirection ends a shell.
const (
	writerScript = `i=0
while [ ! -f /data/server-ready ]; do sleep 0.1; done
while [ $i -lt 3 ]; do i=$((i+1)); echo "line $i" >> /data/log; done
echo "state written $i" > /data/state
if (exec 3<>/proc/gvisor/checkpoint) 2>/dev/null; then exec 3<>/proc/gvisor/checkpoint; echo 1 >&3; read -r r <&3; exec 3>&-; else r=error; fi
echo "checkpoint result: ${r:-error}"
while :; do i=$((i+1)); echo "writer $i"; echo "line $i" >> /data/log; sleep 1; done`
	serverScript = `httpd -p 8080 -h /data
n=0
echo ready > /data/server-ready
while :; do n=$((n+1)); echo "server $n"; sleep 0.5; done`
)

// runPod runs a pod labelled app=<app> in namespace test (startPod) with its writer and
// server containers; serverScript replaces the server's script.
func (e *env) runPod(name, app, serverScript string) *criPod {
	e.t.Helper()
	p := e.startPod(name, app)
	p.add("writer", writerScript)
	p.add("server", serverScript)
	return p
}

// startPod runs the sandbox of a pod labelled app=<app> in namespace test, with a fresh
// UID, its own cgroup, and the emptyDir "data" as a gVisor pod-shared tmpfs (the mount
// hint GKE Sandbox gives emptyDirs; the shim finds the volume's host path).
func (e *env) startPod(name, app string) *criPod {
	e.t.Helper()
	now := time.Now().UnixNano()
	p := &criPod{e: e, name: name, uid: fmt.Sprintf("%08x-0000-4000-8000-%012x", now&0xffffffff, now&0xffffffffffff)}
	p.logDir = e.t.TempDir()
	p.cgroup = cgroupParent(e.t, "/podsnapshot-e2e-"+filepath.Base(e.cd.Dir)+"/pod-"+p.uid)
	p.emptyDir = filepath.Join(e.kubeletPodsDir, p.uid, "volumes", "kubernetes.io~empty-dir", "data")
	must(e.t, os.MkdirAll(p.emptyDir, 0o755))
	pod := harness.PodConfig{
		Metadata:     harness.PodMetadata{Name: name, Namespace: "test", UID: p.uid},
		Hostname:     name,
		LogDirectory: p.logDir,
		Labels:       map[string]string{"app": app},
		Annotations: map[string]string{
			"dev.gvisor.spec.mount.data.type":  "tmpfs",
			"dev.gvisor.spec.mount.data.share": "pod",
		},
		Linux: &harness.PodLinux{CgroupParent: p.cgroup},
	}
	p.file = pod.Write(e.t)
	p.id = strings.TrimSpace(e.cd.MustCrictl(e.t, "runp", "--runtime", harness.RuntimeHandler, p.file))
	e.t.Cleanup(p.remove)
	return p
}

// add creates and starts busybox container name running script, with the emptyDir at
// /data.
func (p *criPod) add(name, script string) {
	p.e.t.Helper()
	p.e.createContainer(p.id, p.file, harness.ContainerConfig{
		Metadata: harness.ContainerMetadata{Name: name},
		Image:    harness.ImageSpec{Image: harness.BusyboxImage},
		Command:  []string{"sh", "-c", script},
		Mounts:   []harness.Mount{{ContainerPath: "/data", HostPath: p.emptyDir}},
		LogPath:  name + ".log",
	})
}

// log returns the path of container name's log (CRI format: time stream tag line).
func (p *criPod) log(name string) string { return filepath.Join(p.logDir, name+".log") }

// container returns the ID of the pod's container name.
func (p *criPod) container(name string) string {
	p.e.t.Helper()
	id := strings.TrimSpace(p.e.cd.MustCrictl(p.e.t, "ps", "-q", "--pod", p.id, "--name", "^"+name+"$"))
	if id == "" || strings.Contains(id, "\n") {
		p.e.t.Fatalf("pod %s: container %s: crictl ps gave %q", p.name, name, id)
	}
	return id
}

// exec runs cmd in container name and returns its output.
func (p *criPod) exec(name string, cmd ...string) string {
	p.e.t.Helper()
	return p.e.cd.MustCrictl(p.e.t, append([]string{"exec", p.container(name)}, cmd...)...)
}

// remove stops and removes the pod (once).
func (p *criPod) remove() {
	if p.removed {
		return
	}
	p.removed = true
	p.e.cd.Crictl(p.e.t, "stopp", p.id)
	p.e.cd.Crictl(p.e.t, "rmp", p.id)
}

// sandboxPid returns the pid CRI reports for the pod's sandbox.
func (p *criPod) sandboxPid() int {
	p.e.t.Helper()
	var v struct {
		Info struct {
			Pid int `json:"pid"`
		} `json:"info"`
	}
	must(p.e.t, json.Unmarshal([]byte(p.e.cd.MustCrictl(p.e.t, "inspectp", "-o", "json", p.id)), &v))
	return v.Info.Pid
}

// firstLine returns the first line of the CRI log at path that contains want, without
// CRI's prefix, or "".
func firstLine(path, want string) string {
	b, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.SplitN(l, " ", 4); len(f) == 4 && strings.Contains(f[3], want) {
			return f[3]
		}
	}
	return ""
}

// highestCount returns the highest N of lines "<prefix> N" in the CRI log at path.
func highestCount(path, prefix string) int {
	b, _ := os.ReadFile(path)
	n := -1
	for _, l := range strings.Split(string(b), "\n") {
		var v int
		if f := strings.SplitN(l, " ", 4); len(f) == 4 {
			if _, err := fmt.Sscanf(f[3], prefix+" %d", &v); err == nil && v > n {
				n = v
			}
		}
	}
	return n
}

// TestCRIPodSnapshotAndRestore: the whole pod is checkpointed by its writer; the same pod
// again (a new UID, so a new, empty emptyDir on the host, a new IP and a new cgroup) is
// restored: both containers continue their counters, the emptyDir contents are back and
// served over the new pod's network, and the sandbox lives in the new pod's cgroup.
func TestCRIPodSnapshotAndRestore(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newCRIEnv(t, kind)
		first := e.runPod("web", "my-app", serverScript)
		harness.WaitForOutput(t, first.log("writer"), "checkpoint result: resume", time.Minute)
		m := e.committed(first.id)
		if len(m.Containers) != 2 || m.Containers[0].Name != "writer" || m.Containers[1].Name != "server" || m.SandboxKey == "" {
			t.Fatalf("snapshot records containers %+v (sandbox key %q); want writer and server", m.Containers, m.SandboxKey)
		}
		savedServer := highestCount(first.log("server"), "server")
		firstIP := podIP(e, first.id)
		first.remove()

		// Another replica: a new name and UID, as a Deployment's next pod.
		second := e.runPod("web-2", "my-app", serverScript)
		harness.WaitForOutput(t, second.log("writer"), "checkpoint result: restore", time.Minute)
		if line := e.logLine(second.id, "podsnapshot: restored"); !strings.Contains(line, m.UUID) || !strings.Contains(line, "with 3 containers") {
			t.Fatalf("restore log line %q; want snapshot %s with 3 containers", line, m.UUID)
		} else {
			msg := line[strings.Index(line, "podsnapshot:"):]
			t.Log(msg[:strings.IndexByte(msg+`"`, '"')])
		}
		// Both continue: the writer's counter after its saved 3, the server's after the
		// value it had reached (not from 1: that would be a cold start).
		harness.WaitForOutput(t, second.log("writer"), "writer 4", 30*time.Second)
		harness.Eventually(t, 30*time.Second, "the server's counter continues", func() bool {
			return highestCount(second.log("server"), "server") > savedServer
		})
		if first := firstLine(second.log("server"), "server "); first == "server 1" {
			t.Fatalf("the restored server started counting at 1: %q", first)
		}
		// The emptyDir's contents are back (a tmpfs inside the sandbox: the new pod's
		// host directory stays empty), in both containers.
		if got := strings.TrimSpace(second.exec("server", "cat", "/data/state")); got != "state written 3" {
			t.Fatalf("server reads /data/state = %q after the restore", got)
		}
		if got := second.exec("writer", "cat", "/data/log"); !strings.HasPrefix(got, "line 1\nline 2\nline 3\nline 4\n") {
			t.Fatalf("writer reads /data/log = %q after the restore", got)
		}
		// On the host the volume holds at most gVisor's filestore (the tmpfs's backing
		// memory), never the files: they came back inside the sandbox.
		names, err := os.ReadDir(second.emptyDir)
		must(t, err)
		for _, n := range names {
			if !strings.HasPrefix(n.Name(), ".gvisor.filestore.") {
				t.Fatalf("the new pod's emptyDir on the host holds %s; the volume is the sandbox's tmpfs", n.Name())
			}
		}
		// The network is the new pod's: a new IP, and the restored httpd answers on it.
		ip := podIP(e, second.id)
		if ip.Equal(firstIP) || !e.net.Subnet.Contains(ip) {
			t.Fatalf("restored pod IP %s (first pod %s), want a new one in %s", ip, firstIP, e.net.Subnet)
		}
		url := fmt.Sprintf("http://%s/state", net.JoinHostPort(ip.String(), "8080"))
		harness.Eventually(t, 30*time.Second, "GET "+url+" from the restored pod", func() bool {
			return strings.TrimSpace(httpGet(url)) == "state written 3"
		})
		// The sandbox lives in the new pod's cgroup; the saved one is never written back.
		cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", second.sandboxPid()))
		must(t, err)
		if !strings.Contains(string(cg), second.cgroup) || strings.Contains(string(cg), first.cgroup) {
			t.Fatalf("restored sandbox cgroups:\n%s\nwant below %s", cg, second.cgroup)
		}
		second.remove()
		harness.Eventually(t, 15*time.Second, "no process of the pods left", func() bool {
			procs, err := harness.FindProcesses([]string{e.runscRoot, e.cd.Dir})
			return err == nil && len(procs) == 0
		})
		e.checkReports(m.UUID, first.uid, second.uid)
	})
}

// checkReports checks what the shims reported for the node agent about pods test/web
// (cold start with the snapshot's UUID reserved, then its checkpoint) and test/web-2
// (restored from it).
func (e *env) checkReports(uuid, webUID, web2UID string) {
	t := e.t
	t.Helper()
	cfg, err := config.Load(e.config)
	must(t, err)
	entries, bad, err := report.Spool{Dir: cfg.Reports()}.List()
	must(t, err)
	if len(bad) > 0 {
		t.Fatalf("unreadable reports: %v", bad)
	}
	got := map[string][]report.Report{}
	for _, en := range entries {
		got[en.Report.Pod.Name] = append(got[en.Report.Pod.Name], en.Report)
	}
	path := strings.TrimSuffix(e.storeURL, "/") + "/test/my-app/" + uuid
	for pod, want := range map[string][]report.Report{
		"web": {
			{Kind: report.ColdStart, Pod: report.Pod{Namespace: "test", Name: "web", UID: webUID}, Reason: report.ReasonNoSnapshot, Snapshot: uuid},
			{Kind: report.CheckpointStarted, Snapshot: uuid},
			{Kind: report.CheckpointCommitted, Snapshot: uuid, StoragePath: path},
		},
		"web-2": {{Kind: report.Restored, Pod: report.Pod{Namespace: "test", Name: "web-2", UID: web2UID}, Snapshot: uuid, StoragePath: path}},
	} {
		rs := got[pod]
		if len(rs) != len(want) {
			t.Fatalf("reports about pod %s: %+v; want %d", pod, rs, len(want))
		}
		for i, w := range want {
			r := rs[i]
			if r.Kind != w.Kind || r.Snapshot != w.Snapshot || r.Policy != "my-app" || r.Pod.Namespace != "test" ||
				(w.Pod.UID != "" && r.Pod != w.Pod) || (w.Reason != "" && r.Reason != w.Reason) ||
				(w.StoragePath != "" && r.StoragePath != w.StoragePath) {
				t.Fatalf("report %d about pod %s: %+v; want %+v", i, pod, r, w)
			}
		}
		var seen []string
		for _, r := range rs {
			seen = append(seen, fmt.Sprintf("%s %s %.3f s", r.Kind, r.Snapshot, r.Seconds))
		}
		t.Logf("reports about pod test/%s: %s", pod, strings.Join(seen, "; "))
	}
}

// TestCRIPodThatDiffersStartsCold: a pod whose server has other args than the snapshot's,
// and a pod without its server, start cold with the reason logged (the first as soon as
// the server arrives, the second after restore_wait_seconds); a pod removed while its
// restore waits goes in bounded time, and one whose waiting container is stopped starts
// cold and runs that container's next attempt; a pod whose labels match no policy is a
// plain runsc pod that cannot checkpoint.
func TestCRIPodThatDiffersStartsCold(t *testing.T) {
	e := newCRIEnv(t, localStore)
	first := e.runPod("web", "my-app", serverScript)
	harness.WaitForOutput(t, first.log("writer"), "checkpoint result: resume", time.Minute)
	e.committed(first.id)
	first.remove()

	changed := e.runPod("web", "my-app", strings.Replace(serverScript, "sleep 0.5", "sleep 0.4", 1))
	harness.Eventually(t, 30*time.Second, "cold start because the server differs", func() bool {
		return strings.Contains(e.logLine(changed.id, "decision=\"cold start\""), "container server differs from the one in the snapshot")
	})
	// Started cold: the writer runs from the start and checkpoints afresh.
	harness.WaitForOutput(t, changed.log("writer"), "checkpoint result: resume", time.Minute)
	harness.WaitForOutput(t, changed.log("server"), "server 1", 30*time.Second)
	changed.remove()

	// Only the writer arrives: the restore waits restore_wait_seconds, then starts cold.
	partial := e.startPod("partial", "my-app")
	partial.add("writer", writerScript)
	harness.Eventually(t, 30*time.Second, "cold start because the server never came", func() bool {
		return strings.Contains(e.logLine(partial.id, "decision=\"cold start\""), "containers server of snapshot")
	})
	// The writer waits for a server that never comes; it runs, cold, in a running sandbox.
	if out := partial.exec("writer", "sh", "-c", "ls /data; echo ok"); !strings.Contains(out, "ok") {
		t.Fatalf("exec in the cold-started writer: %q", out)
	}
	partial.remove()

	// A waiting container stopped (as kubelet does when a probe fails): the rest of the
	// pod starts cold, and the container's next attempt runs in its sandbox.
	probed := e.startPod("probed", "my-app")
	probed.add("writer", writerScript)
	e.cd.MustCrictl(t, "stop", probed.container("writer"))
	if line := e.logLine(probed.id, "decision=\"cold start\""); !strings.Contains(line, "container writer was killed while the pod waited") {
		t.Fatalf("decision after a waiting container was stopped: %q", line)
	}
	again := e.createContainer(probed.id, probed.file, harness.ContainerConfig{
		Metadata: harness.ContainerMetadata{Name: "writer", Attempt: 1},
		Image:    harness.ImageSpec{Image: harness.BusyboxImage},
		Command:  []string{"sh", "-c", "echo again; exec sleep 3600"},
		LogPath:  "writer-1.log",
	})
	if out := e.cd.MustCrictl(t, "exec", again, "echo", "ok"); strings.TrimSpace(out) != "ok" {
		t.Fatalf("exec in the writer's next attempt: %q", out)
	}
	probed.remove()

	// A pod stopped while its restore waits for a container ends in bounded time, and
	// nothing of it is left.
	waiting := e.startPod("waiting", "my-app")
	waiting.add("writer", writerScript)
	start := time.Now()
	waiting.remove()
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("stopp and rmp of a pod waiting for its restore took %v", took)
	}

	plain := e.runPod("other", "not-matched", serverScript)
	if line := e.decision(plain.id); !strings.Contains(line, "plain runsc") {
		t.Fatalf("decision for a pod no policy matches: %q", line)
	}
	harness.WaitForOutput(t, plain.log("writer"), "checkpoint result: error", time.Minute)
	plain.remove()
	harness.Eventually(t, 15*time.Second, "no process of the pods left", func() bool {
		procs, err := harness.FindProcesses([]string{e.runscRoot, e.cd.Dir})
		return err == nil && len(procs) == 0
	})
}

// TestCRIStopPodDuringUpload: `crictl stopp` and `rmp` of a pod whose snapshot is
// uploading finish in bounded time, and the upload commits or leaves nothing.
func TestCRIStopPodDuringUpload(t *testing.T) {
	e := newCRIEnv(t, localStore)
	p := e.startPod("big", "my-app")
	e.createContainer(p.id, p.file, harness.ContainerConfig{
		Metadata: harness.ContainerMetadata{Name: "big"},
		Image:    harness.ImageSpec{Image: harness.WorkloadsImage},
		Command:  []string{"slowinit", "-mib", "384", "-seconds", "1", "-checkpoint"},
		LogPath:  "big.log",
	})
	harness.WaitForOutput(t, p.log("big"), "checkpoint result: resume", time.Minute)
	start := time.Now()
	e.cd.MustCrictl(t, "stopp", p.id)
	e.cd.MustCrictl(t, "rmp", p.id)
	p.removed = true
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("stopp and rmp during an upload took %v", took)
	}
	e.uploadAllOrNothing("stopp/rmp")
}
