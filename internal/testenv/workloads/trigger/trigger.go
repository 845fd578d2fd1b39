// Package trigger is gVisor's workload checkpoint trigger as the test workloads use it:
// write "1" to /proc/gvisor/checkpoint and read how this copy of the process came back
// from the same open file. gVisor decides at open time which checkpoint a file waits
// for, so a fresh open would wait for the next checkpoint, not this one.
package trigger

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"
)

// File is gVisor's trigger: writing "1" starts a checkpoint, reading blocks until it is
// over and returns "resume", "restore" or "error".
const File = "/proc/gvisor/checkpoint"

// ErrUnavailable is wrapped by Checkpoint's error when File cannot be opened: the
// sandbox offers no workload checkpoint (no policy, or a restored pod).
var ErrUnavailable = errors.New("checkpoint trigger unavailable")

// Checkpoint writes "1" to File and returns what it then reads from the same descriptor
// ("resume", "restore" or "error"). Raw syscalls keep the descriptor blocking: the read
// must wait in the kernel until the checkpoint is over (the sandbox is frozen meanwhile
// anyway).
func Checkpoint() (string, error) {
	fd, err := syscall.Open(File, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("%w: open %s: %w", ErrUnavailable, File, err)
	}
	defer syscall.Close(fd)
	if _, err := syscall.Write(fd, []byte("1")); err != nil {
		return "", fmt.Errorf("write %s: %w", File, err)
	}
	var buf [64]byte
	for {
		n, err := syscall.Read(fd, buf[:])
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if errors.Is(err, syscall.EAGAIN) {
			// Not expected on a blocking descriptor, but harmless to wait out.
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if err != nil {
			return "", fmt.Errorf("read %s: %w", File, err)
		}
		if n == 0 {
			return "", fmt.Errorf("read %s: empty result", File)
		}
		return strings.TrimSpace(string(buf[:n])), nil
	}
}
