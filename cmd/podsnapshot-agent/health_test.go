package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// The agent's containerd check: nil while a listener is at the socket; an error naming
// the address once the socket is gone or nobody listens on it (a mount of a socket
// containerd replaced), so that the liveness probe fails and the kubelet restarts the
// container with a fresh mount.
func TestContainerdCheck(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "containerd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	check := containerdCheck(sock)
	if err := check(nil); err != nil {
		t.Fatalf("containerd listening: %v", err)
	}
	// A listener closed without removing its socket file: what a stale mount sees.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if err := check(nil); err == nil || !strings.Contains(err.Error(), sock) {
		t.Fatalf("nobody listening: %v, want an error naming %s", err, sock)
	}
	if err := containerdCheck(filepath.Join(t.TempDir(), "missing.sock"))(nil); err == nil {
		t.Fatal("no socket: no error")
	}
}
