package harness

import (
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/hostproc"
)

// Process is a host process the leak check watches, as hostproc reads it from /proc.
type Process = hostproc.Process

// watchedPrefixes name the processes that must not outlive a test, matched against comm
// and the base name of argv[0]: containerd-shim-podsnapshot-v1 (whose comm is cut to
// "containerd-shim") and the serving shim it starts (podsnapshot-shimd, with the shim's
// name as argv[0]), containerd-shim-runc-v2, runsc and the runsc-gofer and
// runsc-sandbox it re-executes itself as, and fake-gcs-server. internal/testenv/lab
// also watches containerd itself; the harness never did (StartContainerd's cleanup stops and
// reaps its containerds), so the list stays as it was.
var watchedPrefixes = []string{"containerd-shim", "runsc", "fake-gcs-server"}

// FindProcesses returns the watched processes (shims, runsc, gofers, sandboxes,
// fake-gcs-server) whose command line mentions one of markers (such as a containerd's
// directory: a shim's -address, a sandbox's bundle path), plus their watched
// descendants (runsc commands the shim runs, which name only runsc's root).
func FindProcesses(markers []string) ([]Process, error) {
	return hostproc.FindProcesses(watchedPrefixes, markers)
}

// reapLeftovers waits up to grace for the watched processes matching markers to exit,
// then kills those still there and returns them.
func reapLeftovers(markers []string, grace time.Duration) []Process {
	return waitThenKill(func() []Process {
		ps, _ := FindProcesses(markers)
		return ps
	}, grace)
}

// waitThenKill gives the killed processes up to 1s to go before the caller unmounts.
func waitThenKill(find func() []Process, grace time.Duration) []Process {
	return hostproc.WaitThenKill(find, grace, time.Second)
}

// Per-test bookkeeping: the markers the harness registered for a test (the directories
// of its containerds and fake-gcs-servers) and the leftovers already killed by a
// containerd's cleanup, which LeakCheck must still report.
var (
	leakMu      sync.Mutex
	leakMarkers = map[testing.TB][]string{}
	leakFound   = map[testing.TB][]Process{}
)

// AddLeakMarker makes LeakCheck also watch processes whose command line mentions s (for
// example the runsc root a test configured for the shim).
func AddLeakMarker(t testing.TB, s string) { addLeakMarker(t, s) }

func addLeakMarker(t testing.TB, s string) {
	leakMu.Lock()
	defer leakMu.Unlock()
	leakMarkers[t] = append(leakMarkers[t], s)
}

func recordLeaks(t testing.TB, ps []Process) {
	leakMu.Lock()
	defer leakMu.Unlock()
	leakFound[t] = append(leakFound[t], ps...)
}

// LeakGrace is how long LeakCheck lets processes take to exit after the test body.
var LeakGrace = 10 * time.Second

// LeakCheck fails the test if, after it ends, a containerd-shim*, runsc* (runsc, gofer,
// sandbox) or fake-gcs-server process of this test is still running, listing them; it
// then kills them. Call it at the start of the test, before StartContainerd, so its check
// runs last.
//
// A process is this test's when its command line mentions a directory of a containerd or
// fake-gcs-server the harness started for the test (or a marker from AddLeakMarker), or
// when it descends from such a process. A test that registered no marker instead checks
// every watched process that did not exist when LeakCheck was called; such a test must not
// run in parallel with others.
func LeakCheck(t testing.TB) {
	t.Helper()
	before := map[[2]uint64]bool{}
	if all, err := hostproc.AllProcesses(); err == nil {
		for _, p := range all {
			before[p.ID()] = true
		}
	} else {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		leakMu.Lock()
		markers := leakMarkers[t]
		found := leakFound[t]
		delete(leakMarkers, t)
		delete(leakFound, t)
		leakMu.Unlock()

		find := func() []Process {
			if len(markers) > 0 {
				ps, _ := FindProcesses(markers)
				return ps
			}
			// Without markers, only this test binary's own descendants: other test
			// binaries run in parallel (go test runs packages at once), and their
			// shims and sandboxes are not this test's leaks.
			all, _ := hostproc.AllProcesses()
			byPID := make(map[int]Process, len(all))
			for _, p := range all {
				byPID[p.PID] = p
			}
			self := os.Getpid()
			var out []Process
			for _, p := range all {
				if hostproc.Watched(p, watchedPrefixes) && !before[p.ID()] && hostproc.DescendsFrom(p, self, byPID) {
					out = append(out, p)
				}
			}
			return out
		}
		found = append(found, waitThenKill(find, LeakGrace)...)
		if len(found) > 0 {
			t.Errorf("harness: %d process(es) outlived the test (now killed):\n%s", len(found), formatProcs(found))
		}
	})
}

func formatProcs(ps []Process) string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = "  " + p.String()
	}
	return strings.Join(lines, "\n")
}

// unmountBelow detaches every mount at or below dir, deepest first: containerd's
// snapshots and task root filesystems stay mounted when a test ends early, and the
// directory could not be removed otherwise.
func unmountBelow(dir string) error { return hostproc.UnmountBelow(dir) }

func goarch() string { return runtime.GOARCH }
