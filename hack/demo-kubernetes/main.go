// Command demo-kubernetes walks through the GKE Pod snapshot guide with kubectl on a
// private Kubernetes on this machine (`make demo-kubernetes [NODES=2]`), printing each
// command and its output like a transcript, with timings:
//
//  1. a cluster of -nodes nodes with nothing of podsnapshot on them (internal/testenv/kube:
//     a network and a mount namespace per node with its containerd, kubelet and
//     kube-proxy), the test images (busybox, pause, python) on every node, a registry and
//     fake-gcs-server (the guide's bucket) on the nodes' bridge; then podsnapshot
//     installed as a user would: `make push` into the registry and `kubectl apply -k` of
//     deploy/kubernetes, whose agent DaemonSet installs the shim, runsc and containerd's
//     handler on every node and labels it;
//
//  2. the guide's PodSnapshotStorageConfig (the bucket) and PodSnapshotPolicy (workload
//     trigger, resume after the checkpoint);
//
//  3. the guide's pod with the guide's Python counter, unchanged, on node-1: it asks
//     gVisor for a checkpoint at count 20 (-trigger-at N changes that number only) and
//     prints "GKE Pod Snapshot: resume";
//
//  4. its PodSnapshot going AwaitingCheckpoint -> AllSnapshotsAvailable, and the event;
//
//  5. the pod deleted and applied again, on node-2 with -nodes 2 (whose node cache is
//     empty: it restores from the bucket): "GKE Pod Snapshot: restore", counting on from
//     the saved count,
//     with its event, the PodRestored condition and the snapshot's lastAccessTime; the
//     cold start and the restore timed;
//
//  6. everything torn down, also on error or Ctrl-C, and checked: no process, namespace,
//     mount, cgroup or network device left.
//
//     go run ./hack/demo-kubernetes [-nodes 2] [-trigger-at 20]
//
// It needs root and `make deps deps-kube` (`make push` builds the rest). Transcript and
// results go to stdout, progress to stderr.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/kube"
	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
)

func main() {
	triggerAt := flag.Int("trigger-at", 20, "the count at which the guide's counter asks for its checkpoint (the guide's own: 20; less shortens the demo, changing that one number of the script)")
	nodes := flag.Int("nodes", 1, "the cluster's nodes: 1, or 2 to restore on the node that did not take the snapshot")
	flag.Parse()
	if flag.NArg() > 0 || *triggerAt < 1 || *nodes < 1 || *nodes > 2 {
		fmt.Fprintln(os.Stderr, "usage: demo-kubernetes [-nodes 1|2] [-trigger-at N>=1]")
		os.Exit(2)
	}
	// The first Ctrl-C (or SIGTERM) cancels the run; teardown then runs with its own
	// bounded timeouts, and further signals are only reported.
	ctx := lab.InterruptContext(logf)
	err := run(ctx, *nodes, *triggerAt)
	if err != nil && ctx.Err() != nil {
		logf("interrupted: %v", err)
		os.Exit(130)
	}
	if err != nil {
		logf("FAILED: %v", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s demo-kubernetes: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, nodes, triggerAt int) error {
	begin := time.Now()
	e := &env{nodes: nodes}
	var res results
	err := e.start(ctx)
	if err == nil {
		w := &walk{ctx: ctx, e: e, triggerAt: triggerAt, res: &res}
		err = w.run()
	}
	if err != nil && ctx.Err() == nil {
		e.dumpDiagnostics()
		e.keepLogs()
	}
	logf("tearing down")
	rep := e.close()
	fmt.Printf("\n### 6. Teardown\n\n  %s\n", rep)
	if err != nil {
		if !rep.clean() {
			return fmt.Errorf("%w; teardown: %s", err, rep)
		}
		return err
	}
	res.print(e, time.Since(begin))
	if !rep.clean() {
		return fmt.Errorf("teardown incomplete: %s", rep)
	}
	return nil
}

// dumpDiagnostics writes the ends of the logs that say why a step failed to stderr: the
// shim's and error lines of each node's containerd, the podsnapshot pods' logs, each
// kubelet's.
func (e *env) dumpDiagnostics() {
	if e.kube == nil {
		return
	}
	for _, n := range e.kube.Nodes {
		b, _ := os.ReadFile(filepath.Join(e.kube.LogDir, n.Name+"-containerd.log"))
		var lines []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "podsnapshot") || strings.Contains(l, "level=error") {
				lines = append(lines, "  "+l)
			}
		}
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		logf("%s: shim and error lines of containerd's log:\n%s", n.Name, strings.Join(lines, "\n"))
		logf("%s", kube.LogTail(filepath.Join(e.kube.LogDir, n.Name+"-kubelet.log"), 4<<10))
	}
	for _, c := range []string{"install", "agent"} {
		out, _ := kubectlQuiet(context.Background(), e.kubeconfig, "-n", "podsnapshot-system", "logs",
			"-l", "app.kubernetes.io/name=podsnapshot-agent", "-c", c, "--tail=40", "--prefix")
		logf("podsnapshot-agent %s logs:\n%s", c, out)
	}
	out, _ := kubectlQuiet(context.Background(), e.kubeconfig, "-n", "podsnapshot-system", "logs",
		"deployment/podsnapshot-controller", "--tail=40")
	logf("podsnapshot-controller logs:\n%s", out)
}

// keepLogs copies the logs of a failed run out of the demo directory, which teardown
// removes: the cluster's daemons' and the nodes' (containerd's carry the shim's lines).
func (e *env) keepLogs() {
	if e.kube == nil {
		return
	}
	dst := filepath.Join(os.TempDir(), "demo-kubernetes-logs-"+time.Now().Format("20060102-150405"))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return
	}
	logs, _ := filepath.Glob(filepath.Join(e.kube.LogDir, "*.log"))
	for _, src := range logs {
		if b, err := os.ReadFile(src); err == nil {
			os.WriteFile(filepath.Join(dst, filepath.Base(src)), b, 0o644)
		}
	}
	logf("logs kept in %s", dst)
}

// kubectlPath is _deps/bin/kubectl (env.start sets it).
var kubectlPath = "kubectl"

// kubectlCmd is kubectl against the cluster of kubeconfig (as $KUBECONFIG).
func kubectlCmd(ctx context.Context, kubeconfig string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, kubectlPath, args...)
	cmd.Env = append(lab.WithoutVar(os.Environ(), "KUBECONFIG"), "KUBECONFIG="+kubeconfig)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// kubectlQuiet runs kubectl (at most 2 minutes) without printing and returns its
// stdout; a non-zero exit is an error with stderr.
func kubectlQuiet(ctx context.Context, kubeconfig string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := kubectlCmd(ctx, kubeconfig, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// machine describes the host in a few words: CPU count and memory.
func machine() string {
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kib int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kib); err == nil {
			mem = fmt.Sprintf(", %.0f GiB memory", float64(kib)/(1<<20))
		}
	}
	return fmt.Sprintf("%d cores%s", runtime.NumCPU(), mem)
}
