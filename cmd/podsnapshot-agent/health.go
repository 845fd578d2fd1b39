package main

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/healthz"
)

// containerdCheck is the agent's liveness check of containerd: a connection to its
// socket at address. The DaemonSet mounts only that socket (not containerd's whole
// /run/containerd, which holds the shims' sockets and the task bundles); a restarted
// containerd makes a new socket, and the mount keeps the old, on which nobody listens.
// The check then fails, the liveness probe with it, and the kubelet restarts the
// container, which gets a mount of the new socket. A containerd down for a restart fails
// it too, for less than the probe's failure threshold (3 × 10 s).
func containerdCheck(address string) healthz.Checker {
	return func(*http.Request) error {
		c, err := net.DialTimeout("unix", address, 2*time.Second)
		if err != nil {
			return fmt.Errorf("containerd at %s: %w", address, err)
		}
		return c.Close()
	}
}
