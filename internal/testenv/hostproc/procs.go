// Package hostproc is the host side of a test environment: it reads /proc for the
// processes a private containerd, runsc or fake-gcs-server left behind and kills them,
// undoes the mounts below a directory, and starts daemons that die with their parent.
// It reports through return values only (no testing.TB) and needs nothing but the
// standard library, so the e2e harness, the lab and the fake-gcs-server launcher all
// build on it.
package hostproc

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is a host process as /proc shows it.
type Process struct {
	PID     int
	PPID    int
	Comm    string   // /proc/PID/comm (at most 15 characters)
	Cmdline []string // /proc/PID/cmdline
	start   uint64   // start time in clock ticks; with PID, identifies the process
}

func (p Process) String() string {
	return fmt.Sprintf("pid %d (%s): %s", p.PID, p.Comm, strings.Join(p.Cmdline, " "))
}

// ID identifies the process across PID reuse: its PID and its start time.
func (p Process) ID() [2]uint64 { return [2]uint64{uint64(p.PID), p.start} }

// Watched tells whether the comm or the base name of argv[0] of p starts with one of
// prefixes. Callers pass the names they must not leave behind: a shim's comm is cut to
// "containerd-shim", and runsc re-executes itself as runsc-gofer and runsc-sandbox, so
// prefixes rather than names.
func Watched(p Process, prefixes []string) bool {
	names := []string{p.Comm}
	if len(p.Cmdline) > 0 {
		names = append(names, filepath.Base(p.Cmdline[0]))
	}
	for _, n := range names {
		for _, prefix := range prefixes {
			if strings.HasPrefix(n, prefix) {
				return true
			}
		}
	}
	return false
}

// AllProcesses reads every process in /proc; ones that exit meanwhile are skipped, and
// zombies too (they hold nothing and are their parent's to reap).
func AllProcesses() ([]Process, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	var out []Process
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := ReadProcess(pid); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// ReadProcess reads process pid; false when it is gone or a zombie.
func ReadProcess(pid int) (Process, bool) {
	dir := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return Process{}, false
	}
	// comm is in parentheses and may itself contain ") ", so split at the last one.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return Process{}, false
	}
	f := strings.Fields(string(stat[i+1:]))
	// After comm: state(0) ppid(1) ... starttime is field 22 of stat, 19 after comm.
	if len(f) < 20 || f[0] == "Z" {
		// A zombie has exited; it is its parent's to reap, and holds nothing.
		return Process{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	start, _ := strconv.ParseUint(f[19], 10, 64)
	comm, _ := os.ReadFile(dir + "/comm")
	raw, _ := os.ReadFile(dir + "/cmdline")
	var args []string
	for _, a := range bytes.Split(bytes.TrimRight(raw, "\x00"), []byte{0}) {
		if len(a) > 0 {
			args = append(args, string(a))
		}
	}
	return Process{PID: pid, PPID: ppid, Comm: strings.TrimSpace(string(comm)), Cmdline: args, start: start}, true
}

// FindProcesses returns the processes Watched by prefixes whose command line mentions
// one of markers (such as a containerd's directory: a shim's -address, a sandbox's
// bundle path, runsc's --root, fake-gcs-server's data folder), or that descend from such
// a process (runsc commands the shim runs, which name only runsc's root).
func FindProcesses(prefixes, markers []string) ([]Process, error) {
	all, err := AllProcesses()
	if err != nil {
		return nil, err
	}
	byPID := make(map[int]Process, len(all))
	for _, p := range all {
		byPID[p.PID] = p
	}
	memo := map[int]bool{}
	var ours func(p Process, depth int) bool
	ours = func(p Process, depth int) bool {
		if v, ok := memo[p.PID]; ok {
			return v
		}
		line := strings.Join(p.Cmdline, " ")
		v := false
		for _, m := range markers {
			if mentionsPath(line, m) {
				v = true
				break
			}
		}
		if !v && depth < 64 && p.PPID > 1 {
			if parent, ok := byPID[p.PPID]; ok {
				v = ours(parent, depth+1)
			}
		}
		memo[p.PID] = v
		return v
	}
	var out []Process
	for _, p := range all {
		if Watched(p, prefixes) && ours(p, 0) {
			out = append(out, p)
		}
	}
	return out, nil
}

// mentionsPath reports whether line names the path dir or something below it: dir
// followed by "/", a separator or the end, never by more name characters. Temporary
// directories differ in the length of their random suffix ("/tmp/psn-307416" and
// "/tmp/psn-3074168928"), so a plain substring test would take another test's
// processes, running in a parallel test binary, for this one's and kill them.
func mentionsPath(line, dir string) bool {
	if dir == "" {
		return false
	}
	for i := 0; ; {
		j := strings.Index(line[i:], dir)
		if j < 0 {
			return false
		}
		end := i + j + len(dir)
		if end == len(line) || !isNameByte(line[end]) {
			return true
		}
		i = i + j + 1
	}
}

func isNameByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '.' || b == '_' || b == '-'
}

// WaitThenKill gives the processes find returns up to grace to exit on their own, then
// SIGKILLs those still there and returns them (nil when none was left). It then waits up
// to settle for find to come back empty, so the caller's unmounts don't hit busy mounts.
func WaitThenKill(find func() []Process, grace, settle time.Duration) []Process {
	const poll = 20 * time.Millisecond
	deadline := time.Now().Add(grace)
	for {
		left := find()
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			for _, p := range left {
				// Re-check identity first: the PID may have been reused meanwhile.
				if q, ok := ReadProcess(p.PID); ok && q.start == p.start {
					syscall.Kill(p.PID, syscall.SIGKILL)
				}
			}
			for i := 0; i < int(settle/poll) && len(find()) > 0; i++ {
				time.Sleep(poll)
			}
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// DescendsFrom reports whether p is a descendant of the process ancestor; byPID holds
// the processes by PID (as AllProcesses read them).
func DescendsFrom(p Process, ancestor int, byPID map[int]Process) bool {
	for depth := 0; depth < 64 && p.PPID > 1; depth++ {
		if p.PPID == ancestor {
			return true
		}
		parent, ok := byPID[p.PPID]
		if !ok {
			return false
		}
		p = parent
	}
	return false
}
