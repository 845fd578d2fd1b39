package nodeinstall

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ShimBinary is the shim's file name, argv[0]'s base name of every running shim.
const ShimBinary = "containerd-shim-podsnapshot-v1"

// Shim is one running podsnapshot shim process.
type Shim struct {
	PID int
	// ID is its -id argument: the containerd task (under CRI, the pod sandbox) it serves.
	ID string
}

// ProcessLister lists the running podsnapshot shims.
type ProcessLister interface {
	Shims() ([]Shim, error)
}

// ProcShims scans /proc for shims (the pod has hostPID, so its /proc is the host's).
type ProcShims struct {
	// ProcRoot is the host's /proc.
	ProcRoot string
}

// Shims returns the processes whose argv[0] has the base name ShimBinary, in PID order.
// Processes that exit during the scan are skipped.
func (p ProcShims) Shims() ([]Shim, error) {
	pids, err := procPIDs(p.ProcRoot)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var shims []Shim
	for _, pid := range pids {
		cmdline, err := os.ReadFile(filepath.Join(p.ProcRoot, strconv.Itoa(pid), "cmdline"))
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("list processes: %w", err)
		}
		argv := strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
		if filepath.Base(argv[0]) == ShimBinary {
			shims = append(shims, Shim{PID: pid, ID: flagValue(argv[1:], "id")})
		}
	}
	return shims, nil
}

// procPIDs returns the PIDs of procRoot's process directories, in increasing order.
func procPIDs(procRoot string) ([]int, error) {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids, nil
}

// flagValue returns the value of Go flag name in args (-name v, -name=v, --name v,
// --name=v), or "".
func flagValue(args []string, name string) string {
	for i, a := range args {
		if !strings.HasPrefix(a, "-") {
			continue // a value, not a flag
		}
		a = strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
