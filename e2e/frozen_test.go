package e2e

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
)

// TestFrozenSandboxCanBeRemoved: with the runsc sandbox process stopped (SIGSTOP),
// runsc cannot answer, yet `ctr task ps` returns in bounded time, `ctr task kill -s KILL`
// ends the task (the shim kills the sandbox and gofer by pid when `runsc kill` does not
// finish), and task and container are removed, leaving no process behind.
func TestFrozenSandboxCanBeRemoved(t *testing.T) {
	e := newEnv(t, noStore)
	log := e.start("frozen", nil, "counter")
	harness.WaitForOutput(t, log, "count 0", 30*time.Second)
	procs, err := harness.FindProcesses([]string{e.runscRoot, e.cd.Dir})
	must(t, err)
	sandbox := 0
	for _, p := range procs {
		if filepath.Base(p.Cmdline[0]) == "runsc-sandbox" {
			sandbox = p.PID
		}
	}
	if sandbox == 0 {
		t.Fatalf("no runsc-sandbox process among %v", procs)
	}
	must(t, syscall.Kill(sandbox, syscall.SIGSTOP))
	t.Cleanup(func() { _ = syscall.Kill(sandbox, syscall.SIGCONT) }) // if the test fails early

	start := time.Now()
	if r := e.cd.Ctr(t, "task", "ps", "frozen"); r.ExitCode == 0 {
		t.Fatalf("task ps of a frozen sandbox succeeded: %s", r)
	}
	if d := time.Since(start); d > 25*time.Second {
		t.Fatalf("task ps of a frozen sandbox took %v", d)
	}

	start = time.Now()
	if r := e.cd.Ctr(t, "task", "kill", "-s", "KILL", "frozen"); r.ExitCode != 0 {
		t.Fatalf("task kill -s KILL of a frozen sandbox: %s", r)
	}
	harness.Eventually(t, 30*time.Second, "the frozen task stops", func() bool { return taskStatus(e, "frozen") == "STOPPED" })
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("killing the frozen sandbox took %v", d)
	}
	e.cd.MustCtr(t, "task", "rm", "frozen")
	e.cd.MustCtr(t, "container", "rm", "frozen")
	if line := e.logLine("frozen", "killed the sandbox"); !strings.Contains(line, "runsc kill") {
		t.Fatalf("the shim did not say what it did: %q", line)
	}
	harness.Eventually(t, 15*time.Second, "no process of the frozen pod left", func() bool {
		procs, err := harness.FindProcesses([]string{e.runscRoot, e.cd.Dir})
		return err == nil && len(procs) == 0
	})
}
