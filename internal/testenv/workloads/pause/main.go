// Command pause is the sandbox ("pause") container of the CRI tests: the image pinned as
// containerd's sandbox image, podsnapshot.test/pause:latest. Like Kubernetes' own pause
// it does nothing but hold the pod's sandbox open: it blocks until SIGTERM or SIGINT and
// then exits 0. As PID 1 of its PID namespace it also reaps orphaned children that are
// reparented to it (on SIGCHLD), so they do not stay zombies.
//
// It is built statically (CGO_ENABLED=0) like the other workloads, so the image needs no
// libraries.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: pause (takes no arguments)")
		os.Exit(2)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "pause: %v, exiting\n", sig)
		os.Exit(0)
	}
}

// reap collects every child that has exited, without blocking: one SIGCHLD may stand for
// several exits.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
