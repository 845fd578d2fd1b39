package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Outside CPU: the CPU time of processes that are not the benchmark's, over the whole
// run. The load average cannot tell: it counts the benchmark's own threads (containerd,
// shims, sandboxes) as much as anyone else's. /proc is sampled: each process seen is
// the benchmark's (its ancestry reaches this process, a child subreaper so that
// daemonised shims stay below it), a kernel thread (kthreadd's; kept apart, since the
// benchmark's own I/O makes kworkers busy) or outside. Processes of other PID namespaces
// on the same kernel (other containers) are not seen at all: the host's user time
// (/proc/stat) less what the processes seen account for is counted as outside too. A
// run during which others used more than voidShare of one core in user mode is marked
// VOID: its figures measured a shared machine.

// voidShare is the outside user CPU, as a share of one core over the run, above which
// the run is void.
const voidShare = 0.10

// outsideInterval is how often /proc is sampled. A process that starts and ends between
// two samples is missed, as is the last moment of one that ends: short-lived outside
// processes are undercounted, never ours overcounted.
const outsideInterval = 400 * time.Millisecond

// clockTicks is the unit of /proc/PID/stat's utime and stime: USER_HZ, 100 on every
// Linux architecture Go supports (sysconf(_SC_CLK_TCK) needs cgo).
const clockTicks = 100

// kthreadd is the parent of every kernel thread.
const kthreadd = 2

// procStat is what one /proc/PID/stat says of a process.
type procStat struct {
	comm  string // the command name, cut to 15 bytes by the kernel
	state byte   // R, S, D, Z, ...
	ppid  int
	start uint64 // starttime, in clock ticks since boot: tells a reused PID apart
	utime uint64 // user CPU, clock ticks
	stime uint64 // system CPU, clock ticks
	// cutime and cstime: the CPU of its children that ended and were waited for.
	cutime, cstime uint64
}

// procClass is whose a process is.
type procClass int

const (
	classOutside procClass = iota
	classOurs              // the benchmark's process tree (it is a child subreaper)
	classKernel            // kthreadd and its kernel threads
)

// classify says whose each process of snap is: ours when its ancestry reaches pid self,
// kernel for kthreadd and its children, outside otherwise (also when a parent is missing
// from snap, which happens only for the instant between a parent's exit and its
// children's reparenting). Pure: snap is a snapshot of /proc, by PID.
func classify(snap map[int]procStat, self int) map[int]procClass {
	out := make(map[int]procClass, len(snap))
	var walk func(pid, depth int) procClass
	walk = func(pid, depth int) procClass {
		if c, ok := out[pid]; ok {
			return c
		}
		c := classOutside
		st, ok := snap[pid]
		switch {
		case pid == self:
			c = classOurs
		case pid == kthreadd:
			c = classKernel
		case !ok || pid <= 1 || depth > len(snap):
			c = classOutside // init, a missing parent, or a cycle (a torn snapshot)
		default:
			c = walk(st.ppid, depth+1)
		}
		if ok {
			out[pid] = c
		}
		return c
	}
	for pid := range snap {
		walk(pid, 0)
	}
	return out
}

// cpuTotals are CPU seconds, by class of process and for the whole host.
type cpuTotals struct {
	// OursUser and OursSystem: the benchmark's tree, descendants that ended and were
	// waited for included (their parents' cutime and cstime).
	OursUser   float64 `json:"ours_user_s"`
	OursSystem float64 `json:"ours_system_s"`
	// OutsideUser and OutsideSystem: the processes this PID namespace shows outside the
	// tree (and outside kthreadd's).
	OutsideUser   float64 `json:"outside_visible_user_s"`
	OutsideSystem float64 `json:"outside_visible_system_s"`
	Kernel        float64 `json:"kernel_threads_s"`
	// HostUser (user + nice) and HostSystem (system + irq + softirq) are /proc/stat's,
	// all cores: every process of the kernel, seen from this namespace or not.
	HostUser   float64 `json:"host_user_s"`
	HostSystem float64 `json:"host_system_s"`
}

// Unseen is the user CPU of the host that no process seen here accounts for: processes
// in other PID namespaces (other containers on the same kernel) and outside processes
// that started and ended between two samples. Never negative.
func (t cpuTotals) Unseen() float64 {
	return max(0, t.HostUser-t.OursUser-t.OutsideUser)
}

// OutsideUserAll is the user CPU of everything but the benchmark: seen and unseen.
func (t cpuTotals) OutsideUserAll() float64 { return t.OutsideUser + t.Unseen() }

// accumulate adds to t the CPU each process of cur used since prev, by cur's classes:
// its own time since prev (all of it when it is new: it started since) plus what its
// children that ended meanwhile added to its cutime and cstime, less what those
// children had already been counted for in prev (they vanished from cur). A process
// that ended together with its parent between two samples is lost. Pure.
func (t *cpuTotals) accumulate(prev, cur map[int]procStat, class map[int]procClass) {
	// What the children that vanished since prev had been counted for, by parent.
	type ticks struct{ u, s uint64 }
	gone := map[int]ticks{}
	for pid, p := range prev {
		if c, ok := cur[pid]; !ok || c.start != p.start {
			g := gone[p.ppid]
			g.u += p.utime + p.cutime
			g.s += p.stime + p.cstime
			gone[p.ppid] = g
		}
	}
	for pid, c := range cur {
		var p procStat
		if q, ok := prev[pid]; ok && q.start == c.start {
			p = q
		}
		g := gone[pid]
		du := float64(sub(c.utime+c.cutime, p.utime+p.cutime+g.u)) / clockTicks
		ds := float64(sub(c.stime+c.cstime, p.stime+p.cstime+g.s)) / clockTicks
		switch class[pid] {
		case classOurs:
			t.OursUser += du
			t.OursSystem += ds
		case classOutside:
			t.OutsideUser += du
			t.OutsideSystem += ds
		case classKernel:
			t.Kernel += du + ds
		}
	}
}

// addHost adds the host's CPU between two /proc/stat readings.
func (t *cpuTotals) addHost(prev, cur hostTicks) {
	t.HostUser += float64(sub(cur.user, prev.user)) / clockTicks
	t.HostSystem += float64(sub(cur.system, prev.system)) / clockTicks
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

// hostTicks are /proc/stat's CPU ticks so far, all cores.
type hostTicks struct{ user, system uint64 }

// readHostTicks reads /proc/stat's cpu line: user + nice, system + irq + softirq.
func readHostTicks() (hostTicks, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return hostTicks{}, fmt.Errorf("outside CPU: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return hostTicks{}, fmt.Errorf("outside CPU: /proc/stat: unexpected first line %q", line)
	}
	var v [7]uint64
	for i := range v {
		if v[i], err = strconv.ParseUint(f[i+1], 10, 64); err != nil {
			return hostTicks{}, fmt.Errorf("outside CPU: /proc/stat: %q: %w", line, err)
		}
	}
	// user nice system idle iowait irq softirq
	return hostTicks{user: v[0] + v[1], system: v[2] + v[5] + v[6]}, nil
}

// parseStat reads the fields of a /proc/PID/stat line that procStat holds. The command
// name (field 2) is in parentheses and may hold spaces and parentheses: the fields
// after it follow the last ')'.
func parseStat(line string) (procStat, error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("no command name in %q", line)
	}
	f := strings.Fields(line[i+1:])
	// f[0] is field 3 (state); ppid is field 4, utime 14, stime 15, cutime 16, cstime
	// 17, starttime 22.
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("%d fields after the command name in %q", len(f), line)
	}
	st := procStat{state: f[0][0]}
	if j := strings.IndexByte(line, '('); j >= 0 && j < i {
		st.comm = line[j+1 : i]
	}
	var err error
	if st.ppid, err = strconv.Atoi(f[1]); err != nil {
		return procStat{}, fmt.Errorf("ppid: %w", err)
	}
	for _, x := range []struct {
		dst *uint64
		i   int
	}{{&st.utime, 11}, {&st.stime, 12}, {&st.cutime, 13}, {&st.cstime, 14}, {&st.start, 19}} {
		if *x.dst, err = strconv.ParseUint(f[x.i], 10, 64); err != nil {
			return procStat{}, fmt.Errorf("field %d: %w", x.i+3, err)
		}
	}
	return st, nil
}

// readProc snapshots /proc: every process whose stat could be read (processes exit
// while it reads; those are skipped).
func readProc() (map[int]procStat, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("outside CPU: %w", err)
	}
	snap := make(map[int]procStat, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if st, err := parseStat(string(b)); err == nil {
			snap[pid] = st
		}
	}
	return snap, nil
}

// reapOrphans waits for the zombies among this process's children that it never started
// itself: as a child subreaper it inherits the daemonised shims and runsc's sandboxes
// and gofers when their parents exit, and Go reaps only the children it started.
// Others (containerd, ctr, runsc commands) are left to their exec.Cmd's Wait, whose
// status a wait here would steal; so only these names, which no code of the benchmark
// starts directly, are reaped.
func reapOrphans(snap map[int]procStat, self int) {
	for pid, st := range snap {
		if st.ppid != self || st.state != 'Z' {
			continue
		}
		// runsc re-executes itself through /proc/self/exe: its sandbox and gofer are
		// "exe" (or runsc-*, by argv[0]) in comm. The serving shim's comm is its file's
		// name, podsnapshot-shimd, cut to 15 characters.
		if strings.HasPrefix(st.comm, "containerd-shim") || strings.HasPrefix(st.comm, "podsnapshot-shi") ||
			strings.HasPrefix(st.comm, "runsc-") || st.comm == "exe" {
			_, _ = unix.Wait4(pid, nil, unix.WNOHANG, nil)
		}
	}
}

// outsideReport is the outside CPU of a whole run.
type outsideReport struct {
	cpuTotals
	WallS float64 `json:"wall_s"`
	// UnseenUser is Unseen(): host user time no process seen here accounts for.
	UnseenUser float64 `json:"unseen_user_s"`
	// UserShare is OutsideUserAll / WallS: the share of one core others used in user
	// mode, seen or not.
	UserShare float64 `json:"outside_user_share_of_one_core"`
	Void      bool    `json:"void"`
	Samples   int     `json:"samples"`
	Err       string  `json:"error,omitempty"`
}

// outsideWatch samples /proc in the background until stop.
type outsideWatch struct {
	started time.Time
	done    chan struct{}
	wg      sync.WaitGroup

	mu      sync.Mutex
	totals  cpuTotals // guarded by mu
	samples int       // guarded by mu
	err     error     // guarded by mu; the first error, which ends the sampling
}

// watchOutside makes this process a child subreaper, so that the shims containerd
// starts, which daemonise, stay in its tree (reparented to it, not to init), and starts
// sampling. The caller must call stop.
func watchOutside() *outsideWatch {
	w := &outsideWatch{started: time.Now(), done: make(chan struct{})}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		w.err = fmt.Errorf("outside CPU: PR_SET_CHILD_SUBREAPER: %w", err)
		return w
	}
	w.wg.Add(1)
	go w.run()
	return w
}

func (w *outsideWatch) run() {
	defer w.wg.Done()
	self := os.Getpid()
	prev, err := readProc()
	var prevHost hostTicks
	if err == nil {
		prevHost, err = readHostTicks()
	}
	tick := time.NewTicker(outsideInterval)
	defer tick.Stop()
	for stopping := false; err == nil && !stopping; {
		select {
		case <-w.done:
			stopping = true // one last sample
		case <-tick.C:
		}
		var cur map[int]procStat
		var host hostTicks
		if cur, err = readProc(); err == nil {
			host, err = readHostTicks()
		}
		if err != nil {
			break
		}
		reapOrphans(cur, self)
		w.mu.Lock()
		w.totals.accumulate(prev, cur, classify(cur, self))
		w.totals.addHost(prevHost, host)
		w.samples++
		w.mu.Unlock()
		prev, prevHost = cur, host
	}
	w.mu.Lock()
	w.err = err
	w.mu.Unlock()
}

// stop takes a last sample, ends the sampling and returns the run's outside CPU.
func (w *outsideWatch) stop() outsideReport {
	close(w.done)
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	r := outsideReport{cpuTotals: w.totals, WallS: time.Since(w.started).Seconds(), Samples: w.samples}
	if r.WallS > 0 {
		r.UserShare = r.OutsideUserAll() / r.WallS
	}
	r.UnseenUser = r.Unseen()
	r.Void = r.UserShare > voidShare
	if w.err != nil {
		r.Err = w.err.Error()
	}
	logf("outside CPU: %s", r)
	return r
}

func (r outsideReport) String() string {
	if r.Samples == 0 {
		return "not measured (" + r.Err + ")"
	}
	s := fmt.Sprintf("%.1f s user by others over %.0f s = %.1f%% of one core (%.1f s by processes seen here outside the benchmark's tree, %.1f s of the host's user time that no process seen here accounts for: other PID namespaces, processes too short for the sampling); %.1f s system by the outside processes seen",
		r.OutsideUserAll(), r.WallS, 100*r.UserShare, r.OutsideUser, r.UnseenUser, r.OutsideSystem)
	s += fmt.Sprintf("; the benchmark's tree %.1f s user + %.1f s system; kernel threads (kworkers and the like, much of it the benchmark's own I/O; not counted) %.1f s",
		r.OursUser, r.OursSystem, r.Kernel)
	if r.Void {
		s += fmt.Sprintf(" — VOID: above %.0f%% of one core", 100*voidShare)
	}
	if r.Err != "" {
		s += " (sampling stopped early: " + r.Err + ")"
	}
	return s
}
