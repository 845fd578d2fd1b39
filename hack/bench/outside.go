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
// shims, sandboxes) as much as anyone else's. A run during which others used more than
// voidShare of one core is marked VOID: its figures measured a shared machine.

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

// cpuTotals are CPU seconds by class.
type cpuTotals struct {
	OutsideUser   float64 `json:"outside_user_s"`
	OutsideSystem float64 `json:"outside_system_s"`
	Kernel        float64 `json:"kernel_threads_s"`
}

// accumulate adds to t the CPU each process used between prev and cur (its whole CPU
// time when it is new in cur: it started since prev), by cur's classes. Pure.
func (t *cpuTotals) accumulate(prev, cur map[int]procStat, class map[int]procClass) {
	for pid, c := range cur {
		var u0, s0 uint64
		if p, ok := prev[pid]; ok && p.start == c.start {
			u0, s0 = p.utime, p.stime
		}
		du := float64(sub(c.utime, u0)) / clockTicks
		ds := float64(sub(c.stime, s0)) / clockTicks
		switch class[pid] {
		case classOutside:
			t.OutsideUser += du
			t.OutsideSystem += ds
		case classKernel:
			t.Kernel += du + ds
		}
	}
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
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
	// f[0] is field 3 (state); ppid is field 4, utime 14, stime 15, starttime 22.
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
	}{{&st.utime, 11}, {&st.stime, 12}, {&st.start, 19}} {
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
		// "exe" (or runsc-*, by argv[0]) in comm.
		if strings.HasPrefix(st.comm, "containerd-shim") || strings.HasPrefix(st.comm, "runsc-") || st.comm == "exe" {
			_, _ = unix.Wait4(pid, nil, unix.WNOHANG, nil)
		}
	}
}

// outsideReport is the outside CPU of a whole run.
type outsideReport struct {
	cpuTotals
	WallS float64 `json:"wall_s"`
	// UserShare is OutsideUser / WallS: the share of one core others used in user mode.
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
	tick := time.NewTicker(outsideInterval)
	defer tick.Stop()
	for err == nil {
		select {
		case <-w.done:
		case <-tick.C:
		}
		var cur map[int]procStat
		if cur, err = readProc(); err != nil {
			break
		}
		reapOrphans(cur, self)
		w.mu.Lock()
		w.totals.accumulate(prev, cur, classify(cur, self))
		w.samples++
		w.mu.Unlock()
		prev = cur
		select {
		case <-w.done:
			return
		default:
		}
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
		r.UserShare = r.OutsideUser / r.WallS
	}
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
	s := fmt.Sprintf("%.1f s user + %.1f s system by processes outside the benchmark's tree over %.0f s: user %.1f%% of one core",
		r.OutsideUser, r.OutsideSystem, r.WallS, 100*r.UserShare)
	s += fmt.Sprintf("; kernel threads (kworkers and the like, much of it the benchmark's own I/O; not counted) %.1f s", r.Kernel)
	if r.Void {
		s += fmt.Sprintf(" — VOID: above %.0f%% of one core", 100*voidShare)
	}
	if r.Err != "" {
		s += " (sampling stopped early: " + r.Err + ")"
	}
	return s
}
