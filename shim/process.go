package shim

import (
	"sync"
	"time"

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
	// pid is the host pid containerd sees: the sandbox process for a sandbox's init (also
	// for its containers), the detached `runsc exec` process (alive exactly as long as the
	// exec'd process) for an exec.
	pid int
	// internalPid is the exec'd process's pid inside the sandbox, for `runsc kill --pid`.
	internalPid int
	state       state
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
		state:       stateCreated,
		done:        make(chan struct{}),
	}
}

// transition moves the process to next if its state allows it, and reports whether it
// did.
func (p *process) transition(next state) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.state.can(next) {
		return false
	}
	p.state = next
	return true
}

// markForRestore moves a created process to createdForRestore: its Start restores it.
// A process that moved on meanwhile (its pod started cold and ran or ended it) stays.
func (p *process) markForRestore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == stateCreated {
		p.state = stateCreatedForRestore
	}
}

// setExited records the exit once (the process moves to stopped); later calls are
// ignored (runsc wait and the reaper can both report the same exit). It reports whether
// this call recorded it.
func (p *process) setExited(status int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.state.can(stateStopped) {
		return false
	}
	p.state = stateStopped
	p.exitStatus = uint32(status)
	p.exitedAt = time.Now()
	close(p.done)
	return true
}

// info is a consistent view of the process for the task API.
type info struct {
	pid        int
	state      state
	exitStatus uint32
	exitedAt   time.Time
}

func (p *process) info() info {
	p.mu.Lock()
	defer p.mu.Unlock()
	return info{pid: p.pid, state: p.state, exitStatus: p.exitStatus, exitedAt: p.exitedAt}
}

func (p *process) getPid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

func (p *process) setPid(pid int) {
	p.mu.Lock()
	p.pid = pid
	p.mu.Unlock()
}

func (p *process) getIO() *processIO {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.io
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}
