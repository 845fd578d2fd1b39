package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
)

// The shim as a plain runtime: no policy directory content, so every container is a
// plain runsc container.

func TestRunEchoAndExitCode(t *testing.T) {
	e := newEnv(t, noStore)
	out := e.cd.MustCtr(t, e.runArgs(e.config, []string{"--rm"}, "echo", "echo", "hi")...)
	if strings.TrimSpace(out) != "hi" {
		t.Fatalf("ctr run echo hi printed %q", out)
	}
	r := e.cd.Ctr(t, e.runArgs(e.config, []string{"--rm"}, "exit7", "sh", "-c", "exit 7")...)
	if r.ExitCode != 7 {
		t.Fatalf("sh -c 'exit 7' exited %d (%s)", r.ExitCode, r)
	}
	if line := e.logLine("echo", "decision="); !strings.Contains(line, "plain runsc") {
		t.Fatalf("decision for a pod without policy: %q", line)
	}
}

func TestDetachedTask(t *testing.T) {
	e := newEnv(t, noStore)
	log := e.start("det", nil, "counter")
	harness.WaitForOutput(t, log, "count 1", 30*time.Second)

	r := e.cd.Ctr(t, "task", "exec", "--exec-id", "e1", "det", "sh", "-c", "echo from-exec; exit 3")
	if r.ExitCode != 3 || strings.TrimSpace(r.Stdout) != "from-exec" {
		t.Fatalf("task exec: %s", r)
	}
	ps := e.cd.MustCtr(t, "task", "ps", "det")
	if !strings.Contains(ps, "PID") || len(strings.Split(strings.TrimSpace(ps), "\n")) < 2 {
		t.Fatalf("task ps printed no process:\n%s", ps)
	}

	e.cd.MustCtr(t, "task", "pause", "det")
	if st := taskStatus(e, "det"); st != "PAUSED" {
		t.Fatalf("after pause the task is %s", st)
	}
	e.cd.MustCtr(t, "task", "resume", "det")
	if st := taskStatus(e, "det"); st != "RUNNING" {
		t.Fatalf("after resume the task is %s", st)
	}

	metrics := e.cd.MustCtr(t, "task", "metrics", "det")
	if !strings.Contains(metrics, "memory.usage_in_bytes") || !strings.Contains(metrics, "pids.current") {
		t.Fatalf("task metrics:\n%s", metrics)
	}
	e.remove("det")
}

func taskStatus(e *env, id string) string {
	for _, line := range strings.Split(e.cd.MustCtr(e.t, "task", "ls"), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

// TestTerminal runs `ctr run -t` under a pseudo-terminal (util-linux script).
func TestTerminal(t *testing.T) {
	e := newEnv(t, noStore)
	script, err := exec.LookPath("script")
	if err != nil {
		t.Fatalf("script (util-linux) is needed for the terminal test: %v", err)
	}
	args := e.runArgs(e.config, []string{"--rm", "-t"}, "tty", "sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo is-a-terminal")
	ctr := e.cd.CtrCommand(context.Background(), args...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, "-qec", shellJoin(ctr.Args), "/dev/null")
	cmd.Env = ctr.Env
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "is-a-terminal") {
		t.Fatalf("ctr run -t: %v\n%s", err, out)
	}
}

func shellJoin(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(quoted, " ")
}

// TestKillAndRemoveLeaveNothing: kill, task rm and container rm leave no shim, runsc or
// gofer process (LeakCheck, registered by newEnv, checks /proc at the end).
func TestKillAndRemoveLeaveNothing(t *testing.T) {
	e := newEnv(t, noStore)
	log := e.start("victim", nil, "counter")
	harness.WaitForOutput(t, log, "count 0", 30*time.Second)
	e.cd.MustCtr(t, "task", "kill", "victim")
	harness.Eventually(t, 30*time.Second, "victim stops", func() bool { return taskStatus(e, "victim") == "STOPPED" })
	e.cd.MustCtr(t, "task", "rm", "victim")
	e.cd.MustCtr(t, "container", "rm", "victim")
	harness.Eventually(t, 15*time.Second, "no process of the victim left", func() bool {
		procs, err := harness.FindProcesses([]string{e.runscRoot, e.cd.Dir})
		return err == nil && len(procs) == 0
	})
}

// TestSandboxGrouping: two containers with CRI's sandbox annotations share one shim and
// one runsc sandbox.
func TestSandboxGrouping(t *testing.T) {
	e := newEnv(t, noStore)
	sbFlags := []string{"-d", "--annotation", "io.kubernetes.cri.container-type=sandbox",
		"--annotation", "io.kubernetes.cri.sandbox-id=pod1"}
	e.cd.MustCtr(t, e.runArgs(e.config, sbFlags, "pod1", "sleep", "1000")...)
	appLog, uri := harness.LogFile(t, "app")
	appFlags := []string{"-d", "--log-uri", uri, "--annotation", "io.kubernetes.cri.container-type=container",
		"--annotation", "io.kubernetes.cri.sandbox-id=pod1"}
	e.cd.MustCtr(t, e.runArgs(e.config, appFlags, "app1", "counter")...)
	harness.WaitForOutput(t, appLog, "count 1", 30*time.Second)

	procs, err := harness.FindProcesses([]string{e.runscRoot, e.cd.Dir})
	must(t, err)
	var shims, sandboxes int
	for _, p := range procs {
		switch filepath.Base(p.Cmdline[0]) {
		case "containerd-shim-podsnapshot-v1":
			shims++
		case "runsc-sandbox":
			sandboxes++
		}
	}
	if shims != 1 || sandboxes != 1 {
		t.Fatalf("want 1 shim and 1 sandbox for the pod, found %d and %d:\n%v", shims, sandboxes, procs)
	}
	e.remove("app1")
	e.remove("pod1")
}
