package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a host process the leak check watches.
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

// watchedPrefixes name the processes that must not outlive a test, matched against comm
// and the base name of argv[0]: containerd-shim-podsnapshot-v1 (whose comm is cut to
// "containerd-shim"), containerd-shim-runc-v2, runsc and the runsc-gofer and
// runsc-sandbox it re-executes itself as, and fake-gcs-server.
var watchedPrefixes = []string{"containerd-shim", "runsc", "fake-gcs-server"}

func watched(comm string, cmdline []string) bool {
	names := []string{comm}
	if len(cmdline) > 0 {
		names = append(names, filepath.Base(cmdline[0]))
	}
	for _, n := range names {
		for _, p := range watchedPrefixes {
			if strings.HasPrefix(n, p) {
				return true
			}
		}
	}
	return false
}

// allProcesses reads every process of /proc; processes that exit while being read are
// skipped.
func allProcesses() ([]Process, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	var procs []Process
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, ok := readProcess(pid)
		if ok {
			procs = append(procs, p)
		}
	}
	return procs, nil
}

func readProcess(pid int) (Process, bool) {
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
	fields := strings.Fields(string(stat[i+1:]))
	// After comm: state(0) ppid(1) ... starttime is field 22 of stat, 19 after comm.
	if len(fields) < 20 {
		return Process{}, false
	}
	if fields[0] == "Z" {
		// A zombie has exited; it is its parent's to reap, and holds nothing.
		return Process{}, false
	}
	ppid, _ := strconv.Atoi(fields[1])
	start, _ := strconv.ParseUint(fields[19], 10, 64)
	comm, _ := os.ReadFile(dir + "/comm")
	cmdline, _ := os.ReadFile(dir + "/cmdline")
	var args []string
	for _, a := range bytes.Split(bytes.TrimRight(cmdline, "\x00"), []byte{0}) {
		if len(a) > 0 {
			args = append(args, string(a))
		}
	}
	return Process{PID: pid, PPID: ppid, Comm: strings.TrimSpace(string(comm)), Cmdline: args, start: start}, true
}

// FindProcesses returns the watched processes (shims, runsc, gofers, sandboxes,
// fake-gcs-server) whose command line mentions one of markers (such as a containerd's
// directory: a shim's -address, a sandbox's bundle path), plus their watched
// descendants (runsc commands the shim runs, which name only runsc's root).
func FindProcesses(markers []string) ([]Process, error) {
	all, err := allProcesses()
	if err != nil {
		return nil, err
	}
	byPID := map[int]Process{}
	for _, p := range all {
		byPID[p.PID] = p
	}
	matched := map[int]bool{}
	var isMatched func(p Process, depth int) bool
	isMatched = func(p Process, depth int) bool {
		if m, ok := matched[p.PID]; ok {
			return m
		}
		m := false
		line := strings.Join(p.Cmdline, " ")
		for _, mk := range markers {
			if mk != "" && strings.Contains(line, mk) {
				m = true
				break
			}
		}
		if !m && depth < 64 {
			if parent, ok := byPID[p.PPID]; ok && p.PPID > 1 {
				m = isMatched(parent, depth+1)
			}
		}
		matched[p.PID] = m
		return m
	}
	var out []Process
	for _, p := range all {
		if watched(p.Comm, p.Cmdline) && isMatched(p, 0) {
			out = append(out, p)
		}
	}
	return out, nil
}

// reapLeftovers waits up to grace for the watched processes matching markers to exit,
// then kills those still there and returns them.
func reapLeftovers(markers []string, grace time.Duration) []Process {
	return waitThenKill(func() []Process {
		ps, _ := FindProcesses(markers)
		return ps
	}, grace)
}

func waitThenKill(find func() []Process, grace time.Duration) []Process {
	deadline := time.Now().Add(grace)
	for {
		left := find()
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			for _, p := range left {
				// Re-check identity first: the PID may have been reused meanwhile.
				if q, ok := readProcess(p.PID); ok && q.start == p.start {
					syscall.Kill(p.PID, syscall.SIGKILL)
				}
			}
			// Give the kernel a moment so the caller's unmounts don't hit busy mounts.
			for i := 0; i < 50 && len(find()) > 0; i++ {
				time.Sleep(20 * time.Millisecond)
			}
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Per-test bookkeeping: the markers the harness registered for a test (the directories
// of its containerds and fake-gcs-servers) and the leftovers already killed by a
// containerd's cleanup, which LeakCheck must still report.
var (
	leakMu      sync.Mutex
	leakMarkers = map[testing.TB][]string{}
	leakFound   = map[testing.TB][]Process{}
)

// AddLeakMarker makes LeakCheck also watch processes whose command line mentions s (for
// example the runsc root a test configured for the shim).
func AddLeakMarker(t testing.TB, s string) { addLeakMarker(t, s) }

func addLeakMarker(t testing.TB, s string) {
	leakMu.Lock()
	defer leakMu.Unlock()
	leakMarkers[t] = append(leakMarkers[t], s)
}

func recordLeaks(t testing.TB, ps []Process) {
	leakMu.Lock()
	defer leakMu.Unlock()
	leakFound[t] = append(leakFound[t], ps...)
}

// LeakGrace is how long LeakCheck lets processes take to exit after the test body.
var LeakGrace = 10 * time.Second

// LeakCheck fails the test if, after it ends, a containerd-shim*, runsc* (runsc, gofer,
// sandbox) or fake-gcs-server process of this test is still running, listing them; it
// then kills them. Call it at the start of the test, before StartContainerd, so its check
// runs last.
//
// A process is this test's when its command line mentions a directory of a containerd or
// fake-gcs-server the harness started for the test (or a marker from AddLeakMarker), or
// when it descends from such a process. A test that registered no marker instead checks
// every watched process that did not exist when LeakCheck was called; such a test must not
// run in parallel with others.
func LeakCheck(t testing.TB) {
	t.Helper()
	before := map[[2]uint64]bool{}
	if all, err := allProcesses(); err == nil {
		for _, p := range all {
			before[[2]uint64{uint64(p.PID), p.start}] = true
		}
	} else {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		leakMu.Lock()
		markers := leakMarkers[t]
		found := leakFound[t]
		delete(leakMarkers, t)
		delete(leakFound, t)
		leakMu.Unlock()

		find := func() []Process {
			if len(markers) > 0 {
				ps, _ := FindProcesses(markers)
				return ps
			}
			all, _ := allProcesses()
			var out []Process
			for _, p := range all {
				if watched(p.Comm, p.Cmdline) && !before[[2]uint64{uint64(p.PID), p.start}] {
					out = append(out, p)
				}
			}
			return out
		}
		found = append(found, waitThenKill(find, LeakGrace)...)
		if len(found) > 0 {
			t.Errorf("harness: %d process(es) outlived the test (now killed):\n%s", len(found), formatProcs(found))
		}
	})
}

func formatProcs(ps []Process) string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = "  " + p.String()
	}
	return strings.Join(lines, "\n")
}

// unmountBelow detaches every mount at or below dir, deepest first: containerd's
// snapshots and task root filesystems stay mounted when a test ends early, and the
// directory could not be removed otherwise.
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
	sort.Slice(points, func(i, j int) bool {
		if len(points[i]) != len(points[j]) {
			return len(points[i]) > len(points[j])
		}
		return points[i] < points[j]
	})
	var errs []string
	for i, mp := range points {
		if i > 0 && points[i-1] == mp {
			continue // a stacked mount; the loop below takes them all
		}
		// Mounts can be stacked on one path (runsc stacks its null-netns bind mounts when
		// sandboxes start concurrently), so unmount until nothing is left there.
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

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, and so on).
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

func goarch() string { return runtime.GOARCH }
