package shim

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// OOM detection. runsc does not report OOMs itself (`runsc events` only samples stats):
// gVisor's own containerd shim, like runc's, watches the sandbox process's memory cgroup
// on the host, where the kernel's OOM killer acts when the pod exceeds its limit. On
// cgroup v1 the kernel signals an eventfd registered through cgroup.event_control
// against memory.oom_control each time the cgroup goes out of memory, and once more when
// the cgroup is removed. The shim does the same with its own eventfd, so that the watch
// can end when the sandbox exits. cgroup v2 (memory.events) is not watched yet.

// errOOMWatchEnded is returned by oomEvents.wait once the watch is over: closed, or the
// cgroup removed.
var errOOMWatchEnded = errors.New("OOM watch ended")

// watchOOM publishes TaskOOM for sandbox c each time its memory cgroup runs out of
// memory, until the sandbox exits. It returns at once for a container that is not a
// sandbox, or a sandbox that has no memory cgroup of its own (then an OOM there would be
// the shim's or its neighbours', not the pod's). Failures are logged, never fatal.
func (s *Service) watchOOM(c *container) {
	if !c.sandbox {
		return
	}
	pid := c.init.getPid()
	logger := log.G(s.ctx).WithField("id", c.id)
	dir, err := memcgOfPid(pid)
	if err != nil {
		logger.WithError(err).Info("no OOM events for this sandbox")
		return
	}
	own, _ := memcgOfPid(os.Getpid())
	if !ownMemcg(dir, own) {
		logger.WithField("cgroup", dir).Info("no OOM events: the sandbox has no memory cgroup of its own")
		return
	}
	ev, err := openOOMEvents(dir)
	if err != nil {
		logger.WithError(err).Warn("no OOM events for this sandbox")
		return
	}
	oom := func() { s.send(&eventstypes.TaskOOM{ContainerID: c.id}) }
	go func() {
		<-c.init.done
		// An OOM kill is what may have ended the sandbox: report one still unread.
		if ev.close() {
			oom()
		}
	}()
	for ev.wait() == nil {
		logger.Warn("sandbox ran out of memory")
		oom()
	}
}

// oomEvents is one cgroup v1 OOM notification registration.
type oomEvents struct {
	dir string   // the memory cgroup directory
	fd  int      // the eventfd, non-blocking; owned by f
	f   *os.File // f reads fd through Go's poller, so close wakes a blocked wait
}

// openOOMEvents registers a fresh eventfd for OOM notifications of the cgroup v1 memory
// cgroup at dir (e.g. /sys/fs/cgroup/memory/default/c1). Errors name the file that
// failed.
func openOOMEvents(dir string) (*oomEvents, error) {
	ctlPath := filepath.Join(dir, "memory.oom_control")
	ctl, err := os.Open(ctlPath)
	if err != nil {
		return nil, fmt.Errorf("OOM events: %w", err)
	}
	// The kernel takes its own reference to the cgroup at registration.
	defer ctl.Close()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("OOM events: eventfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "oom-eventfd")
	reg := fmt.Sprintf("%d %d", fd, ctl.Fd())
	if err := os.WriteFile(filepath.Join(dir, "cgroup.event_control"), []byte(reg), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("OOM events: register with %s: %w", ctlPath, err)
	}
	return &oomEvents{dir: dir, fd: fd, f: f}, nil
}

// wait blocks until the cgroup runs out of memory (nil; several OOMs since the last wait
// count as one) or the watch is over (errOOMWatchEnded).
func (e *oomEvents) wait() error {
	var buf [8]byte // the eventfd counter
	if _, err := e.f.Read(buf[:]); err != nil {
		return errOOMWatchEnded
	}
	if !e.cgroupExists() {
		return errOOMWatchEnded // the wake-up of the cgroup's removal
	}
	return nil
}

// close ends the watch (a blocked wait returns errOOMWatchEnded) and reports whether an
// OOM had been signalled that no wait read.
func (e *oomEvents) close() (pending bool) {
	var buf [8]byte
	n, err := unix.Read(e.fd, buf[:]) // non-blocking: EAGAIN when nothing is pending
	pending = err == nil && n == len(buf) && e.cgroupExists()
	e.f.Close()
	return pending
}

func (e *oomEvents) cgroupExists() bool {
	_, err := os.Stat(filepath.Join(e.dir, "memory.oom_control"))
	return err == nil
}

// ownMemcg reports whether sandbox, the sandbox's memory cgroup directory, is worth
// watching: not the shim's own (shim), and not a hierarchy's root, where no pod limit
// applies.
func ownMemcg(sandbox, shim string) bool {
	return sandbox != "" && sandbox != shim && !isHierarchyRoot(sandbox)
}

// isHierarchyRoot reports whether dir is the root of a cgroup v1 hierarchy (it has
// cgroup.sane_behavior, which only roots have).
func isHierarchyRoot(dir string) bool {
	return fileExists(filepath.Join(dir, "cgroup.sane_behavior"))
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// memcgOfPid returns the host directory of the cgroup v1 memory cgroup of process pid.
func memcgOfPid(pid int) (string, error) {
	cg, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return "", fmt.Errorf("memory cgroup of pid %d: %w", pid, err)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("memory cgroup of pid %d: %w", pid, err)
	}
	dir, err := memcgDir(cg, mi)
	if err != nil {
		return "", fmt.Errorf("memory cgroup of pid %d: %w", pid, err)
	}
	return dir, nil
}

// memcgDir finds the memory cgroup directory from a process's /proc/PID/cgroup
// ("ID:controllers:path" lines) and /proc/self/mountinfo (the memory hierarchy's mount
// point and the cgroup it shows as its root). Error: no cgroup v1 memory controller
// (e.g. a cgroup v2 host) in either file.
func memcgDir(procCgroup, mountinfo []byte) (string, error) {
	var path string
	found := false
	for _, line := range strings.Split(string(procCgroup), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && hasWord(parts[1], "memory") {
			path, found = parts[2], true
			break
		}
	}
	if !found {
		return "", errors.New("no cgroup v1 memory controller in /proc/PID/cgroup")
	}
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source super
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 || g[0] != "cgroup" || !hasWord(g[2], "memory") {
			continue
		}
		root, mountpoint := f[3], f[4]
		// A mount of a sub-cgroup shows paths under root relative to its mount point.
		if root != "/" {
			rel, ok := strings.CutPrefix(path, root)
			if !ok || (rel != "" && rel[0] != '/') {
				continue
			}
			path = rel
		}
		return filepath.Join(mountpoint, path), nil
	}
	return "", errors.New("no cgroup v1 memory hierarchy mounted (mountinfo)")
}

// hasWord reports whether the comma-separated list holds w.
func hasWord(list, w string) bool {
	for _, x := range strings.Split(list, ",") {
		if x == w {
			return true
		}
	}
	return false
}
