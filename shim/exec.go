package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"

	"github.com/podsnapshot/podsnapshot/runtime/runsc"
)

// startExec runs exec'd process p in container c (`runsc exec --detach`) and watches its
// exit through the reaper: the detached `runsc exec` lives exactly as long as p.
func (s *Service) startExec(ctx context.Context, c *container, p *process) error {
	if st := p.info().state; st != stateCreated {
		return errTransition("exec "+p.execID, st, "start")
	}
	r, err := c.ready(ctx)
	if err != nil {
		return err
	}
	pio, err := newProcessIO(p.stdio)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.io = pio
	p.mu.Unlock()
	pidFile := filepath.Join(c.bundle, p.execID+".pid")
	internalPidFile := filepath.Join(c.bundle, p.execID+"-internal.pid")
	defer os.Remove(pidFile)
	defer os.Remove(internalPidFile)
	err = r.Exec(ctx, c.id, *p.spec, c.bundle, runsc.ExecOpts{
		IO: pio.runscIO(), PidFile: pidFile, InternalPidFile: internalPidFile, ConsoleSocket: pio.consoleSocket(),
	})
	if err != nil {
		pio.close()
		p.setExited(255)
		return fmt.Errorf("exec %s in %s: %w", p.execID, c.id, err)
	}
	if err := pio.afterStart(ctx); err != nil {
		return err
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		return fmt.Errorf("exec %s: read pid file: %w", p.execID, err)
	}
	internalPid, _ := runc.ReadPidFile(internalPidFile)
	p.mu.Lock()
	p.pid, p.internalPid = pid, internalPid
	p.mu.Unlock()
	exit := s.awaitPid(pid)
	p.transition(stateRunning)
	s.send(&eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: p.execID, Pid: uint32(pid)})
	go func() { s.exitProcess(c, p, <-exit) }()
	return nil
}

// killExec signals exec'd process p (`runsc kill --pid`).
func (s *Service) killExec(ctx context.Context, c *container, p *process, signal int) error {
	if st := p.info().state; st == stateStopped || st == stateDeleted {
		return fmt.Errorf("%w: exec %s already finished", errdefs.ErrNotFound, p.execID)
	}
	p.mu.Lock()
	internalPid := p.internalPid
	p.mu.Unlock()
	if internalPid == 0 {
		return fmt.Errorf("%w: exec %s has not started", errdefs.ErrFailedPrecondition, p.execID)
	}
	kctx, cancel := context.WithTimeout(ctx, runscBound)
	defer cancel()
	if err := c.runsc.Kill(kctx, c.id, runsc.KillOpts{Signal: signal, Pid: internalPid}); err != nil {
		// runsc cannot signal a process that has just exited; give its exit a moment to
		// be recorded, so the caller gets NotFound rather than runsc's error.
		select {
		case <-p.done:
			return fmt.Errorf("%w: exec %s already finished", errdefs.ErrNotFound, p.execID)
		case <-time.After(2 * time.Second):
		}
		return err
	}
	return nil
}

// deleteExec forgets an exited (or never started) exec'd process.
func (s *Service) deleteExec(c *container, p *process) error {
	if st := p.info().state; st == stateRunning || st == statePaused {
		return errTransition("exec "+p.execID+" of container "+c.id, st, "delete it; kill it first")
	}
	if pio := p.getIO(); pio != nil {
		pio.close()
	}
	p.setExited(255) // a never-started exec; no-op for one that exited
	p.transition(stateDeleted)
	s.mu.Lock()
	delete(c.execs, p.execID)
	s.mu.Unlock()
	return nil
}

// mountRootfs mounts containerd's rootfs mounts at target; unmountRootfs undoes it.
func mountRootfs(mounts []mount.Mount, target string) error {
	if err := os.MkdirAll(target, 0o711); err != nil {
		return err
	}
	return mount.All(mounts, target)
}

func unmountRootfs(target string) error { return mount.UnmountRecursive(target, 0) }
