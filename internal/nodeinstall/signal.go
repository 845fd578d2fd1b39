package nodeinstall

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// SignalRestarter restarts containerd with SIGTERM to the process that listens on its
// socket; containerd's supervisor (systemd with Restart=always, as containerd's own unit
// file has) starts it again. The installer pod must share the host's PID and network
// namespaces (hostPID, hostNetwork) and may read other processes' fds (privileged, or
// CAP_SYS_PTRACE and CAP_KILL).
type SignalRestarter struct {
	// Socket is containerd's gRPC socket as containerd itself names it: the host path
	// (/run/containerd/containerd.sock), which /proc/net/unix lists, not the path this
	// process reaches it by.
	Socket string
	// ProcRoot is the host's /proc ("/proc" with hostPID).
	ProcRoot string
	// Kill sends a signal; nil means kill(2).
	Kill func(pid int, sig syscall.Signal) error
	// PollInterval is how often the new listener is looked for; 0 means 200 ms.
	PollInterval time.Duration
	Log          logrus.FieldLogger
}

// Restart finds containerd's PID, sends it SIGTERM and waits until a different process
// listens on Socket, or ctx ends.
func (s SignalRestarter) Restart(ctx context.Context, why string) (bool, error) {
	inode, err := s.listener()
	if err != nil {
		return false, err
	}
	pid, err := s.owner(inode)
	if err != nil {
		return false, err
	}
	s.Log.Infof("restarting containerd (%s): SIGTERM to pid %d, which listens on %s", why, pid, s.Socket)
	kill := s.Kill
	if kill == nil {
		kill = unix.Kill
	}
	if err := kill(pid, syscall.SIGTERM); err != nil {
		return false, fmt.Errorf("SIGTERM to containerd (pid %d, listening on %s): %w", pid, s.Socket, err)
	}
	poll := s.PollInterval
	if poll <= 0 {
		poll = 200 * time.Millisecond
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("containerd did not come back on %s after SIGTERM to pid %d (its supervisor must restart it, e.g. systemd Restart=always): %w", s.Socket, pid, ctx.Err())
		case <-tick.C:
		}
		// Errors here are the moment between the old process and the new one: retried.
		newInode, err := s.listener()
		if err != nil || newInode == inode {
			continue
		}
		if newPID, err := s.owner(newInode); err == nil && newPID != pid {
			s.Log.Infof("containerd restarted: pid %d listens on %s", newPID, s.Socket)
			return true, nil
		}
	}
}

// listener returns the inode of the socket listening on s.Socket.
func (s SignalRestarter) listener() (uint64, error) {
	path := filepath.Join(s.ProcRoot, "net", "unix")
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	inode, found, err := listeningInode(f, s.Socket)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	if !found {
		return 0, fmt.Errorf("no process listens on containerd's socket %s (%s; is containerd running, and does this pod have hostNetwork?)", s.Socket, path)
	}
	return inode, nil
}

// soAcceptCon is __SO_ACCEPTCON in the Flags column of /proc/net/unix: a listening socket.
const soAcceptCon = 0x10000

// listeningInode reads /proc/net/unix text and returns the inode of the listening
// socket bound to path. Its lines are
//
//	Num       RefCount Protocol Flags    Type St Inode Path
//	0000000000000000: 00000002 00000000 00010000 0001 01 23456 /run/containerd/containerd.sock
//
// (hexadecimal but Inode; the path is absent for an unbound socket). The connected
// sockets of clients also show the server's path: only Flags tells the listener.
func listeningInode(r io.Reader, path string) (inode uint64, found bool, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for first := true; sc.Scan(); first = false {
		fields := strings.Fields(sc.Text())
		if first || len(fields) < 8 || strings.Join(fields[7:], " ") != path {
			continue
		}
		flags, err := strconv.ParseUint(fields[3], 16, 32)
		if err != nil {
			return 0, false, fmt.Errorf("flags %q of %s: %w", fields[3], path, err)
		}
		if flags&soAcceptCon == 0 {
			continue
		}
		inode, err := strconv.ParseUint(fields[6], 10, 64)
		if err != nil {
			return 0, false, fmt.Errorf("inode %q of %s: %w", fields[6], path, err)
		}
		return inode, true, nil
	}
	return 0, false, sc.Err()
}

// owner returns the PID of the process holding socket inode: the only holder but PID 1
// (systemd holds a socket it activates, and must never get the signal), or among
// several, the one named containerd.
func (s SignalRestarter) owner(inode uint64) (int, error) {
	pids, denied, err := socketHolders(s.ProcRoot, inode)
	if err != nil {
		return 0, err
	}
	pids = slices.DeleteFunc(pids, func(pid int) bool { return pid == 1 })
	switch {
	case len(pids) == 1:
		return pids[0], nil
	case len(pids) == 0:
		hint := ""
		if denied {
			hint = " (reading other processes' fds was denied: the installer needs CAP_SYS_PTRACE)"
		}
		return 0, fmt.Errorf("no process holds containerd's socket %s (socket:[%d]) in %s/*/fd%s", s.Socket, inode, s.ProcRoot, hint)
	}
	for _, pid := range pids {
		comm, _ := os.ReadFile(filepath.Join(s.ProcRoot, strconv.Itoa(pid), "comm"))
		if strings.TrimSpace(string(comm)) == "containerd" {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("processes %v hold containerd's socket %s and none is named containerd: restart it with --restart=systemd or by hand", pids, s.Socket)
}

// socketHolders returns the PIDs under procRoot with an fd on socket:[inode], in
// increasing order. denied reports that some process's fds could not be read for want
// of permission; processes that exit meanwhile are skipped.
func socketHolders(procRoot string, inode uint64) (pids []int, denied bool, err error) {
	all, err := procPIDs(procRoot)
	if err != nil {
		return nil, false, err
	}
	want := "socket:[" + strconv.FormatUint(inode, 10) + "]"
	for _, pid := range all {
		fdDir := filepath.Join(procRoot, strconv.Itoa(pid), "fd")
		fds, err := os.ReadDir(fdDir)
		if errors.Is(err, fs.ErrPermission) {
			denied = true
		}
		for _, fd := range fds {
			if target, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && target == want {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids, denied, nil
}
