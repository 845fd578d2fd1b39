// Command demo-kubernetes walks through the GKE Pod snapshot guide with kubectl on a
// private single-node Kubernetes on this machine (`make demo-kubernetes`), printing each
// kubectl command and its output like a transcript, with timings:
//
//  1. a private CNI network and CRI containerd with the podsnapshot runtime handler and
//     the test images (busybox, pause, python), a single-node cluster on it
//     (internal/testenv/kube), the CRDs, namespace and RBAC of deploy/kubernetes applied,
//     and podsnapshot-agent as node agent and as controller (host processes);
//
//  2. the guide's PodSnapshotStorageConfig (a local store) and PodSnapshotPolicy
//     (workload trigger, resume after the checkpoint);
//
//  3. the guide's Python counter pod, which asks gVisor for a checkpoint at count
//     -trigger-at (the guide waits for 20; 5 keeps the demo short);
//
//  4. its PodSnapshot going AwaitingCheckpoint -> AllSnapshotsAvailable, and the event;
//
//  5. the pod deleted and applied again: restored, counting on from the saved count, with
//     its event, the PodRestored condition and the snapshot's lastAccessTime; the cold
//     start and the restore timed;
//
//  6. everything torn down, also on error or Ctrl-C, and checked: no process, mount,
//     cgroup or network device left.
//
//     go run ./hack/demo-kubernetes [-trigger-at 5]
//
// It needs root, `make deps deps-kube build`. Transcript and results go to stdout,
// progress to stderr.
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
	triggerAt := flag.Int("trigger-at", 5, "the count at which the counter asks for its checkpoint (the guide: 20)")
	flag.Parse()
	if flag.NArg() > 0 || *triggerAt < 1 {
		fmt.Fprintln(os.Stderr, "usage: demo-kubernetes [-trigger-at N>=1]")
		os.Exit(2)
	}
	// The first Ctrl-C (or SIGTERM) cancels the run; teardown then runs with its own
	// bounded timeouts, and further signals are only reported.
	ctx := lab.InterruptContext(logf)
	err := run(ctx, *triggerAt)
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

func run(ctx context.Context, triggerAt int) error {
	begin := time.Now()
	e := &env{}
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

// dumpDiagnostics writes the ends of the logs that say why a step failed to stderr.
func (e *env) dumpDiagnostics() {
	if e.cd != nil {
		b, _ := os.ReadFile(e.cd.LogPath)
		var lines []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "podsnapshot") || strings.Contains(l, "level=error") {
				lines = append(lines, "  "+l)
			}
		}
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		logf("shim and error lines of containerd's log:\n%s", strings.Join(lines, "\n"))
	}
	if e.cp != nil {
		logf("%s", kube.LogTail(e.cp.AgentLog, 6<<10))
		logf("%s", kube.LogTail(e.cp.ControllerLog, 6<<10))
	}
	if e.kube != nil {
		logf("%s", kube.LogTail(filepath.Join(e.kube.LogDir, "kubelet.log"), 6<<10))
	}
}

// keepLogs copies the logs of a failed run out of the demo directory, which teardown
// removes: containerd's (with the shim's lines), the agent's and controller's, and the
// cluster's daemons'.
func (e *env) keepLogs() {
	if e.dir == "" {
		return
	}
	dst := filepath.Join(os.TempDir(), "demo-kubernetes-logs-"+time.Now().Format("20060102-150405"))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return
	}
	srcs := []string{filepath.Join(e.dir, "c", "containerd.log"), e.shimConfig}
	if e.cp != nil {
		srcs = append(srcs, e.cp.AgentLog, e.cp.ControllerLog)
	}
	if e.kube != nil {
		logs, _ := filepath.Glob(filepath.Join(e.kube.LogDir, "*.log"))
		srcs = append(srcs, logs...)
	}
	for _, src := range srcs {
		if b, err := os.ReadFile(src); err == nil && src != "" {
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
