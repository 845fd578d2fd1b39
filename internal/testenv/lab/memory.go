package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ShimProcess finds the running podsnapshot shim that serves container id: the process
// whose argv[0] is the shim binary and whose arguments hold `-id ID`.
func ShimProcess(id string) (Process, error) {
	all, err := processes()
	if err != nil {
		return Process{}, err
	}
	for _, p := range all {
		if len(p.Cmdline) == 0 || filepath.Base(p.Cmdline[0]) != ShimBinary {
			continue
		}
		for i := 1; i+1 < len(p.Cmdline); i++ {
			if (p.Cmdline[i] == "-id" || p.Cmdline[i] == "--id") && p.Cmdline[i+1] == id {
				return p, nil
			}
		}
	}
	return Process{}, fmt.Errorf("no %s process with -id %s", ShimBinary, id)
}

// MemoryUsage is a process's resident memory from /proc/PID/status, in bytes.
type MemoryUsage struct {
	Peak    int64 // VmHWM: the resident set's high-water mark over the process's life
	Current int64 // VmRSS
}

// ReadMemory reads VmHWM and VmRSS of process pid.
func ReadMemory(pid int) (MemoryUsage, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return MemoryUsage{}, fmt.Errorf("memory of pid %d: %w", pid, err)
	}
	var m MemoryUsage
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kib, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "VmHWM:":
			m.Peak, found = kib<<10, found+1
		case "VmRSS:":
			m.Current, found = kib<<10, found+1
		}
	}
	if found < 2 {
		return m, fmt.Errorf("memory of pid %d: no VmHWM/VmRSS in its status", pid)
	}
	return m, nil
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/PID/stat's CPU times; 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// ReadCPU returns the user plus system CPU time process pid has used so far (its own
// threads, not its children).
func ReadCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("cpu time of pid %d: %w", pid, err)
	}
	// After the parenthesised comm: state is field 3, utime 14 and stime 15.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("cpu time of pid %d: cannot parse its stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("cpu time of pid %d: cannot parse its stat", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}
