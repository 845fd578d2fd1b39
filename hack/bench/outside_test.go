package main

import (
	"math"
	"os"
	"testing"
)

// A fake /proc: init (1) with the benchmark (100) under a shell (50); the benchmark's
// containerd (101) and a shim (102) that daemonised and was reparented to it, whose
// sandbox (103) is its child; kthreadd (2) and a kworker (3); an editor (200) under
// init; an orphan (300) whose parent (299) is gone from the snapshot.
func fakeProc() map[int]procStat {
	return map[int]procStat{
		1:   {ppid: 0},
		2:   {ppid: 0},
		3:   {ppid: 2},
		50:  {ppid: 1},
		100: {ppid: 50},
		101: {ppid: 100},
		102: {ppid: 100},
		103: {ppid: 102},
		200: {ppid: 1},
		300: {ppid: 299},
	}
}

func TestClassify(t *testing.T) {
	got := classify(fakeProc(), 100)
	want := map[int]procClass{
		1: classOutside, 2: classKernel, 3: classKernel, 50: classOutside,
		100: classOurs, 101: classOurs, 102: classOurs, 103: classOurs,
		200: classOutside, 300: classOutside,
	}
	for pid, c := range want {
		if got[pid] != c {
			t.Errorf("pid %d: class %d, want %d", pid, got[pid], c)
		}
	}
}

func TestClassifyCycle(t *testing.T) {
	// A torn snapshot can show a cycle; it must end, as outside.
	got := classify(map[int]procStat{10: {ppid: 11}, 11: {ppid: 10}}, 100)
	if got[10] != classOutside || got[11] != classOutside {
		t.Errorf("cycle: %v", got)
	}
}

func TestAccumulate(t *testing.T) {
	prev := fakeProc()
	cur := fakeProc()
	set := func(m map[int]procStat, pid int, start, u, s, cu, cs uint64) {
		p := m[pid]
		p.start, p.utime, p.stime, p.cutime, p.cstime = start, u, s, cu, cs
		m[pid] = p
	}
	set(prev, 200, 5, 100, 10, 0, 0) // the editor: 50 + 5 ticks more
	set(cur, 200, 5, 150, 15, 0, 0)
	set(prev, 101, 6, 0, 0, 0, 0) // containerd: 900 + 900 ticks, ours
	set(cur, 101, 6, 900, 900, 0, 0)
	set(prev, 3, 1, 0, 0, 0, 0) // a kworker: 20 ticks, apart
	set(cur, 3, 1, 0, 20, 0, 0)
	set(prev, 50, 7, 1000, 1000, 0, 0) // the shell's PID reused by a new process: all of it
	set(cur, 50, 8, 30, 0, 0, 0)
	// A child of the shim (a runsc command, 104) counted 40 user ticks at prev, then
	// ran 10 more and ended; the shim waited for it: its cutime grew by 50.
	prev[104] = procStat{ppid: 102, start: 9, utime: 40}
	set(prev, 102, 8, 5, 5, 0, 0)
	set(cur, 102, 8, 5, 5, 50, 0)
	var tot cpuTotals
	tot.accumulate(prev, cur, classify(cur, 100))
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9 {
			t.Errorf("%s: %v, want %v", what, got, want)
		}
	}
	near("outside user", tot.OutsideUser, 0.8) // (50 + 30) ticks
	near("outside system", tot.OutsideSystem, 0.05)
	near("kernel", tot.Kernel, 0.2)
	near("ours user", tot.OursUser, 9.1) // 900 + the 10 ticks the ended child added
	near("ours system", tot.OursSystem, 9)

	// The host's user time beyond what the processes seen account for is outside too.
	tot.addHost(hostTicks{user: 1000, system: 0}, hostTicks{user: 3000, system: 100})
	near("host user", tot.HostUser, 20)
	near("unseen", tot.Unseen(), 20-9.1-0.8)
	near("outside user, all", tot.OutsideUserAll(), 20-9.1)
}

func TestParseStat(t *testing.T) {
	line := "4242 (a (b) c) S 7 4242 4242 0 -1 4194560 100 0 0 0 123 45 0 0 20 0 1 0 9876 1000 10 18446744073709551615\n"
	st, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if st.comm != "a (b) c" || st.state != 'S' || st.ppid != 7 || st.utime != 123 || st.stime != 45 || st.start != 9876 {
		t.Errorf("parsed %+v", st)
	}
	if _, err := parseStat("12 no name"); err == nil {
		t.Error("a line without a command name parsed")
	}
}

func TestReadProcSelf(t *testing.T) {
	snap, err := readProc()
	if err != nil {
		t.Fatal(err)
	}
	self, ok := snap[os.Getpid()]
	if !ok || self.ppid != os.Getppid() {
		t.Fatalf("this process in /proc: %+v, %v; want ppid %d", self, ok, os.Getppid())
	}
	if c := classify(snap, os.Getpid())[os.Getpid()]; c != classOurs {
		t.Errorf("this process classed %d", c)
	}
}
