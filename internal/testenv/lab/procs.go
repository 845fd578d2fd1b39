package lab

import (
	"syscall"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/hostproc"
)

// Process is a host process as /proc shows it (hostproc reads it for the lab and for
// the e2e harness).
type Process = hostproc.Process

// watchedPrefixes name the processes a lab must not leave behind, matched against comm
// and the base name of argv[0]: our shim (its comm is cut to "containerd-shim"; the serving
// shim, podsnapshot-shimd, has the shim's name as argv[0]), runsc and
// the runsc-gofer and runsc-sandbox it re-executes itself as, and fake-gcs-server. Unlike
// e2e/harness's list it holds containerd too: Close's final scan (CleanupReport.Left)
// vouches for the lab's containerd as well.
var watchedPrefixes = []string{"containerd-shim", "containerd", "runsc", "fake-gcs-server"}

// processes reads every process in /proc but zombies.
func processes() ([]Process, error) { return hostproc.AllProcesses() }

// FindProcesses returns the watched processes (shims, runsc, gofers, sandboxes,
// fake-gcs-server, containerd) whose command line mentions one of markers, such as a
// lab's directory (a shim's -address, runsc's --root, fake-gcs-server's data folder), or
// that descend from such a process (runsc commands the shim runs).
func FindProcesses(markers []string) ([]Process, error) {
	return hostproc.FindProcesses(watchedPrefixes, markers)
}

// reapProcesses gives the processes matching markers, but for those in skip (daemons
// the caller stops itself), grace to exit on their own, then SIGKILLs the rest and
// returns those it killed, after up to 2s for the kernel to tear them down so the
// unmounts that follow are not busy.
func reapProcesses(markers []string, grace time.Duration, skip map[int]bool) []Process {
	find := func() []Process {
		ps, _ := FindProcesses(markers)
		out := ps[:0]
		for _, p := range ps {
			if !skip[p.PID] {
				out = append(out, p)
			}
		}
		return out
	}
	return hostproc.WaitThenKill(find, grace, 2*time.Second)
}

// ownGroup puts a short-lived child (ctr, the CLI) in its own process group: a Ctrl-C
// in the terminal then reaches only us, and we end the child by cancelling its context.
func ownGroup() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
