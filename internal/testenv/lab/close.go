package lab

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/hostproc"
)

// CleanupReport says what Close did beyond the orderly shutdown.
type CleanupReport struct {
	// Killed are processes of the lab that had to be SIGKILLed after containerd stopped.
	Killed []Process
	// Left are processes of the lab still running at the very end: should be none.
	Left []Process
	// Errs are steps that failed (a container not removed, a mount that stayed busy).
	Errs []error
}

// Clean tells whether nothing of the lab was left running and no step failed.
func (r CleanupReport) Clean() bool { return len(r.Left) == 0 && len(r.Errs) == 0 }

func (r CleanupReport) String() string {
	var b strings.Builder
	if len(r.Left) == 0 {
		b.WriteString("no shim, runsc, gofer, sandbox, containerd or fake-gcs-server process left")
	} else {
		fmt.Fprintf(&b, "%d process(es) LEFT RUNNING:", len(r.Left))
		for _, p := range r.Left {
			b.WriteString("\n  " + p.String())
		}
	}
	if len(r.Killed) > 0 {
		fmt.Fprintf(&b, "; %d process(es) had to be killed:", len(r.Killed))
		for _, p := range r.Killed {
			b.WriteString("\n  " + p.String())
		}
	}
	for _, e := range r.Errs {
		b.WriteString("\n  cleanup error: " + e.Error())
	}
	return b.String()
}

// Close undoes Start and Run, each step bounded in time and independent of how the run
// ended: it removes the containers still there, stops containerd, kills what of the lab
// outlived it (shims and sandboxes survive a containerd by design), stops
// fake-gcs-server, unmounts everything below the lab directory and removes it. Finally it
// scans /proc for any process of the lab. A second call returns an empty report.
func (l *Lab) Close() CleanupReport {
	var rep CleanupReport
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return rep
	}
	l.closed = true
	containers := append([]string(nil), l.containers...)
	tails := l.tails
	l.mu.Unlock()

	// A fresh context: Close also runs after Ctrl-C has cancelled the caller's.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if l.containerd != nil && !l.containerd.Exited() {
		for _, id := range containers {
			l.logf("removing container %s", id)
			if err := l.Remove(ctx, id); err != nil {
				rep.Errs = append(rep.Errs, err)
			}
		}
	}
	for _, t := range tails {
		t.Close()
	}
	if l.log != nil {
		l.log.Close()
	}
	if l.containerd != nil {
		l.logf("stopping containerd")
		l.containerd.Stop(10 * time.Second)
	}
	// Shims and sandboxes survive their containerd by design; here they are leftovers.
	// fake-gcs-server is not one: it is stopped in order just below, after anything
	// that might still talk to it.
	markers := []string{l.Dir}
	skip := map[int]bool{}
	if l.gcs != nil && !l.gcs.Exited() {
		skip[l.gcs.Cmd.Process.Pid] = true
	}
	rep.Killed = reapProcesses(markers, 5*time.Second, skip)
	if l.proxy != nil {
		if err := l.proxy.Close(); err != nil {
			rep.Errs = append(rep.Errs, err)
		}
	}
	if l.gcs != nil {
		l.logf("stopping fake-gcs-server")
		l.gcs.Stop(5 * time.Second)
	}
	if err := hostproc.UnmountBelow(l.Dir); err != nil {
		rep.Errs = append(rep.Errs, err)
	}
	if err := os.RemoveAll(l.Dir); err != nil {
		rep.Errs = append(rep.Errs, fmt.Errorf("remove %s: %w", l.Dir, err))
	}
	left, err := FindProcesses(markers)
	if err != nil {
		rep.Errs = append(rep.Errs, err)
	}
	rep.Left = left
	return rep
}
