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
	if gofer := goferOf(c.id); gofer != 0 {
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

// goferOf returns the pid of the gofer of sandbox id: a child of this shim (the shim is
// the subreaper runsc's processes are reparented to) running `runsc-gofer ... gofer ...
// <id>`; 0 when there is none.
func goferOf(id string) int {
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
		if len(args) < 2 || filepath.Base(args[0]) != "runsc-gofer" || args[len(args)-1] != id {
			continue
		}
		if parentOf(pid) == self {
			return pid
		}
	}
	return 0
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
