package shim

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// registrationBound bounds how long arming a checkpoint watch may delay a sandbox's start.
const registrationBound = 2 * time.Second

// requestGrace is how long after `runsc wait` connected to the sandbox's control socket
// its request is taken as registered: the client writes it at once and the sandbox
// registers the waiter as it decodes it, well within this.
const requestGrace = 20 * time.Millisecond

// awaitControlConnection waits until process pid (a `runsc wait`) holds a socket — its
// connection to the sandbox's control server, the only socket runsc wait opens — then
// lets its request reach the sandbox. It reports false when bound passed first or the
// process ended (the wait's own result says why).
func awaitControlConnection(pid int, bound time.Duration) bool {
	fdDir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	deadline := time.Now().Add(bound)
	for time.Now().Before(deadline) {
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			return false // gone
		}
		for _, fd := range fds {
			if target, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && strings.HasPrefix(target, "socket:") {
				time.Sleep(requestGrace)
				return true
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return false
}
