package harness

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// fakeTB records what the harness reports instead of failing the real test, and runs its
// cleanups when asked. Fatal errors still go to the real test.
type fakeTB struct {
	testing.TB
	errors   []string
	cleanups []func()
}

func (f *fakeTB) Helper()           {}
func (f *fakeTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) Errorf(format string, args ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}
func (f *fakeTB) Failed() bool { return len(f.errors) > 0 }
func (f *fakeTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

// TestLeakCheckReportsLeftovers leaves a task running (runc shim with runsc) and checks
// the cleanups kill the shim, sandbox and gofer and that LeakCheck reports them.
func TestLeakCheckReportsLeftovers(t *testing.T) {
	defer func(g time.Duration) { ShutdownGrace = g }(ShutdownGrace)
	ShutdownGrace = time.Second
	ft := &fakeTB{TB: t}
	LeakCheck(ft)
	c := StartContainerd(ft, ContainerdOptions{})
	c.ImportImage(t, BusyboxImage)
	c.MustCtr(t, "run", "-d", "--runtime", "io.containerd.runc.v2", "--runc-binary", Binary(t, "runsc", ""),
		"--runc-root", c.Dir+"/runsc", BusyboxImage, "sleeper", "sleep", "600")
	ft.runCleanups()
	report := strings.Join(ft.errors, "\n")
	t.Logf("reported:\n%s", report)
	for _, want := range []string{"outlived the test", "containerd-shim-runc-v2", "runsc-sandbox", "runsc-gofer"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if left, _ := FindProcesses([]string{c.Dir}); len(left) > 0 {
		t.Errorf("still running after cleanup:\n%s", formatProcs(left))
	}
}

// TestLeakCheckWithoutMarkers: with no harness object registered, every new watched
// process counts.
func TestLeakCheckWithoutMarkers(t *testing.T) {
	defer func(g time.Duration) { LeakGrace = g }(LeakGrace)
	LeakGrace = 500 * time.Millisecond
	ft := &fakeTB{TB: t}
	LeakCheck(ft)
	// The counter workload, named like a runsc process (argv[0] is what the check reads).
	cmd := exec.Command(Workload(t, "counter"))
	cmd.Args[0] = "runsc-leaktest"
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait() // reap it once the check has killed it
	ft.runCleanups()
	if report := strings.Join(ft.errors, "\n"); !strings.Contains(report, fmt.Sprintf("pid %d", cmd.Process.Pid)) {
		t.Errorf("report %q does not name pid %d", report, cmd.Process.Pid)
	}
}
