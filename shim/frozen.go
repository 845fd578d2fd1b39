package shim

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"
)

// runscBound bounds a runsc command made for an RPC that should answer at once (kill,
// ps, stats, pause, resume, update): a sandbox that does not answer (its process
// stopped, or stuck) must not hang containerd's call.
const runscBound = 10 * time.Second

// forceKill ends sandbox c when `runsc kill` did not finish: it sends SIGKILL to the
// sandbox process and to its gofer, by pid, as runsc itself would. The sandbox's exit
// then reaches waitInit through the reaper. It logs what it did.
func (c *container) forceKill(why error) {
	pids := []int{c.init.getPid()}
	if gofer := goferOf(c.bundle); gofer != 0 {
		pids = append(pids, gofer)
	}
	for _, pid := range pids {
		if pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	log.G(c.s.ctx).WithError(why).WithField("id", c.id).
		Warnf("podsnapshot: runsc kill did not finish within %s: killed the sandbox and its gofer (pids %v) with SIGKILL", runscBound, pids)
}

// goferOf returns the pid of the gofer of the sandbox whose bundle is bundle: a child of
// this shim (the subreaper runsc's processes are reparented to) running `runsc-gofer ...
// gofer --bundle <bundle> ...`; 0 when there is none.
func goferOf(bundle string) int {
	self := os.Getpid()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
		if filepath.Base(args[0]) == "runsc-gofer" && hasBundle(args, bundle) && parentOf(pid) == self {
			return pid
		}
	}
	return 0
}

// hasBundle reports whether args name bundle with --bundle (as one or two arguments).
func hasBundle(args []string, bundle string) bool {
	for i, a := range args {
		if a == "--bundle="+bundle || (a == "--bundle" && i+1 < len(args) && args[i+1] == bundle) {
			return true
		}
	}
	return false
}

// parentOf reads a process's parent pid from /proc/PID/stat; 0 when it cannot.
func parentOf(pid int) int {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	// The command name (field 2) is in parentheses and may hold spaces: fields after
	// the last ')' are state, ppid, ...
	rest := string(stat[bytes.LastIndexByte(stat, ')')+1:])
	f := strings.Fields(rest)
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}
