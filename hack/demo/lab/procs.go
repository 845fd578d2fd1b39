package lab

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is a host process as /proc shows it.
type Process struct {
	PID     int
	PPID    int
	Comm    string
	Cmdline []string
	start   uint64 // start time in clock ticks: with PID it identifies the process
}

func (p Process) String() string {
	return fmt.Sprintf("pid %d (%s): %s", p.PID, p.Comm, strings.Join(p.Cmdline, " "))
}

// watchedPrefixes name the processes a lab must not leave behind, matched against comm
// and the base name of argv[0]: our shim (its comm is cut to "containerd-shim"), runsc and
// the runsc-gofer and runsc-sandbox it re-executes itself as, and fake-gcs-server.
var watchedPrefixes = []string{"containerd-shim", "containerd", "runsc", "fake-gcs-server"}

func isWatched(p Process) bool {
	names := []string{p.Comm}
	if len(p.Cmdline) > 0 {
		names = append(names, filepath.Base(p.Cmdline[0]))
	}
	for _, n := range names {
		for _, prefix := range watchedPrefixes {
			if strings.HasPrefix(n, prefix) {
				return true
			}
		}
	}
	return false
}

// processes reads every process in /proc; ones that exit meanwhile are skipped, and
// zombies too (they hold nothing and are their parent's to reap).
func processes() ([]Process, error) {
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
		if p, ok := readProcess(pid); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

func readProcess(pid int) (Process, bool) {
	dir := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return Process{}, false
	}
	// comm is in parentheses and may contain ") " itself: split at the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return Process{}, false
	}
	f := strings.Fields(string(stat[i+1:]))
	// After comm: state ppid ... starttime (the 20th field after comm).
	if len(f) < 20 || f[0] == "Z" {
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

// FindProcesses returns the watched processes (shims, runsc, gofers, sandboxes,
// fake-gcs-server, containerd) whose command line mentions one of markers, such as a
// lab's directory (a shim's -address, runsc's --root, fake-gcs-server's data folder), or
// that descend from such a process (runsc commands the shim runs).
func FindProcesses(markers []string) ([]Process, error) {
	all, err := processes()
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
			if m != "" && strings.Contains(line, m) {
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
		if isWatched(p) && ours(p, 0) {
			out = append(out, p)
		}
	}
	return out, nil
}

// reapProcesses gives the processes matching markers, but for those in skip (daemons
// the caller stops itself), grace to exit on their own, then SIGKILLs the rest and
// returns those it killed.
func reapProcesses(markers []string, grace time.Duration, skip map[int]bool) []Process {
	find := func() []Process {
		ps, _ := FindProcesses(markers)
		out := ps[:0]
		for _, p := range ps {
			if !skip[p.PID] {
				out = append(out, p)
			}
		}
		return out
	}
	deadline := time.Now().Add(grace)
	for {
		left := find()
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			for _, p := range left {
				// Check it is still the same process: the PID may have been reused.
				if q, ok := readProcess(p.PID); ok && q.start == p.start {
					syscall.Kill(p.PID, syscall.SIGKILL)
				}
			}
			// Let the kernel tear them down, so the unmounts that follow are not busy.
			for i := 0; i < 100 && len(find()) > 0; i++ {
				time.Sleep(20 * time.Millisecond)
			}
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// unmountBelow detaches every mount at or below dir, deepest first: containerd's
// overlay snapshots, task root filesystems, and the null-netns bind mount runsc leaves in
// its root; the directory could not be removed otherwise.
func unmountBelow(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	// Deepest first, so a parent is never busy because of a child mount.
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []string
	seen := map[string]bool{}
	for _, mp := range points {
		if seen[mp] {
			continue
		}
		seen[mp] = true
		// Mounts can be stacked on one path; unmount until none is left there.
		for n := 0; n < 100; n++ {
			err := syscall.Unmount(mp, syscall.MNT_DETACH)
			if err == syscall.EINVAL || err == syscall.ENOENT {
				break
			}
			if err != nil {
				errs = append(errs, fmt.Sprintf("unmount %s: %v", mp, err))
				break
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space and so on).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// daemon is a long-running child (containerd, fake-gcs-server) that must not outlive us.
type daemon struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the child is reaped
}

// startDaemon starts cmd in its own process group, so a Ctrl-C in the terminal reaches
// only us and our cleanup stops the daemon in order, and with SIGKILL as its parent-death
// signal, so it dies with us even if we are killed before cleaning up. The kernel sends
// that signal when the *thread* that forked the child exits, hence the goroutine locked to
// its thread for the child's whole life.
func startDaemon(name string, cmd *exec.Cmd) (*daemon, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	d := &daemon{name: name, cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(d.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return d, nil
}

// exited tells whether the daemon has exited.
func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs; it returns once the daemon is
// reaped. It may be called again.
func (d *daemon) stop(grace time.Duration) {
	if d.exited() {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(grace):
		d.cmd.Process.Kill()
		<-d.done
	}
}

// ownGroup puts a short-lived child (ctr, the CLI) in its own process group: a Ctrl-C
// in the terminal then reaches only us, and we end the child by cancelling its context.
func ownGroup() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
