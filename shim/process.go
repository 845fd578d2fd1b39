package shim

import (
	"sync"
	"time"

	"github.com/containerd/containerd/api/types/task"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// process is a container's init process or one exec'd process.
type process struct {
	containerID string
	// execID is "" for the init process.
	execID string
	stdio  stdio
	// spec is the exec'd process's spec; nil for init.
	spec *specs.Process

	// mu guards the fields below it.
	mu sync.Mutex
	// pid is the host pid containerd sees: the sandbox process for a sandbox's init, the
	// detached `runsc exec` process (alive exactly as long as the exec'd process) for an
	// exec.
	pid int
	// internalPid is the exec'd process's pid inside the sandbox, for `runsc kill --pid`.
	internalPid int
	status      task.Status
	exitStatus  uint32
	exitedAt    time.Time
	io          *processIO

	// done is closed once the process has exited and its exit status is set.
	done chan struct{}
}

func newProcess(containerID, execID string, s stdio, spec *specs.Process) *process {
	return &process{
		containerID: containerID,
		execID:      execID,
		stdio:       s,
		spec:        spec,
		status:      task.Status_CREATED,
		done:        make(chan struct{}),
	}
}

// setExited records the exit once; later calls are ignored (runsc wait and the reaper can
// both report the same exit). It reports whether this call recorded it.
func (p *process) setExited(status int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status == task.Status_STOPPED {
		return false
	}
	p.status = task.Status_STOPPED
	p.exitStatus = uint32(status)
	p.exitedAt = time.Now()
	close(p.done)
	return true
}

func (p *process) snapshot() (pid int, status task.Status, exitStatus uint32, exitedAt time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid, p.status, p.exitStatus, p.exitedAt
}

func (p *process) setStatus(s task.Status) {
	p.mu.Lock()
	if p.status != task.Status_STOPPED {
		p.status = s
	}
	p.mu.Unlock()
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}
