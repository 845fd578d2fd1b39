package shim

import (
	"errors"
	"testing"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
)

func TestStateTransitions(t *testing.T) {
	for _, tc := range []struct {
		from, to state
		ok       bool
	}{
		{stateCreated, stateRunning, true},
		{stateCreatedForRestore, stateRunning, true},
		{stateCreated, stateStopped, true}, // killed before it ran, or its Start failed
		{stateCreated, stateDeleted, true},
		{stateCreated, statePaused, false},
		{stateRunning, statePaused, true},
		{statePaused, stateRunning, true},
		{stateRunning, stateDeleted, false}, // kill it first
		{statePaused, stateDeleted, false},
		{stateStopped, stateRunning, false},
		{stateStopped, stateDeleted, true},
		{stateDeleted, stateStopped, false},
		{stateRunning, stateRunning, false}, // Started twice publishes TaskStart once
	} {
		if got := tc.from.can(tc.to); got != tc.ok {
			t.Errorf("%s -> %s: %v, want %v", tc.from, tc.to, got, tc.ok)
		}
	}
	for s, want := range map[state]task.Status{
		stateCreated: task.Status_CREATED, stateCreatedForRestore: task.Status_CREATED,
		stateRunning: task.Status_RUNNING, statePaused: task.Status_PAUSED,
		stateStopped: task.Status_STOPPED, stateDeleted: task.Status_STOPPED,
	} {
		if s.status() != want {
			t.Errorf("%s: status %s, want %s", s, s.status(), want)
		}
	}
	if err := errTransition("container c", stateRunning, "delete it"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("transition error %v is not FailedPrecondition", err)
	}
}

func TestProcessExitsOnce(t *testing.T) {
	p := newProcess("c", "", stdio{}, nil)
	if !p.transition(stateRunning) || p.transition(stateRunning) {
		t.Fatal("created -> running must happen exactly once")
	}
	if !p.setExited(3) || p.setExited(9) {
		t.Fatal("the exit must be recorded once")
	}
	if in := p.info(); in.state != stateStopped || in.exitStatus != 3 || !p.exited() {
		t.Fatalf("after exit: %+v", in)
	}
	if p.transition(stateRunning) || !p.transition(stateDeleted) {
		t.Fatal("a stopped process can only be deleted")
	}
	if p.setExited(1) {
		t.Fatal("a deleted process cannot exit again")
	}
}
