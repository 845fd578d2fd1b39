package shim

import (
	"fmt"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
)

// state is where a process stands, in the style of containerd's process/init_state.go:
// each RPC asks whether its transition is allowed before it acts, and the process moves
// only along the edges of transitions.
//
//	created ───────────┐
//	                   ├──> running <──> paused
//	createdForRestore ─┘       │           │
//	   │    │                  v           │
//	   │    └────────────> stopped <───────┘
//	   └──────────────────────> │
//	                            v
//	                         deleted
//
// createdForRestore is a container whose Start restores it from a snapshot (a sandbox
// whose pod restores, or a container that arrived for its pod's deferred restore):
// runsc may not have created it yet, and the lifecycle (package podsnap) decides at
// Start whether it restores or starts cold; a created process is marked so at Create
// (process.markForRestore). A restore is a Start with a restore config.
// A created container can also go straight to stopped: killed before it ran, or its
// Start failed. Delete is allowed from created and stopped only.
type state int

const (
	stateCreated state = iota
	stateCreatedForRestore
	stateRunning
	statePaused
	stateStopped
	stateDeleted
)

var stateNames = [...]string{"created", "created for restore", "running", "paused", "stopped", "deleted"}

func (s state) String() string { return stateNames[s] }

// transitions lists, for each state, the states it may move to.
var transitions = map[state][]state{
	stateCreated:           {stateRunning, stateStopped, stateDeleted},
	stateCreatedForRestore: {stateRunning, stateStopped, stateDeleted},
	stateRunning:           {statePaused, stateStopped},
	statePaused:            {stateRunning, stateStopped},
	stateStopped:           {stateDeleted},
}

// can reports whether s may move to next.
func (s state) can(next state) bool {
	for _, t := range transitions[s] {
		if t == next {
			return true
		}
	}
	return false
}

// created reports whether the process was created and has not run yet.
func (s state) created() bool { return s == stateCreated || s == stateCreatedForRestore }

// status is the state as containerd's task API names it.
func (s state) status() task.Status {
	switch s {
	case stateCreated, stateCreatedForRestore:
		return task.Status_CREATED
	case stateRunning:
		return task.Status_RUNNING
	case statePaused:
		return task.Status_PAUSED
	default:
		return task.Status_STOPPED
	}
}

// errTransition is the error of an RPC whose transition s does not allow.
func errTransition(what string, s state, action string) error {
	return fmt.Errorf("%w: %s is %s: cannot %s", errdefs.ErrFailedPrecondition, what, s, action)
}
