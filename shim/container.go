package shim

import (
	"context"
	"fmt"
	"syscall"
	"time"

	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/podsnapshot/podsnapshot/internal/config"
	"github.com/podsnapshot/podsnapshot/internal/podsnap"
	"github.com/podsnapshot/podsnapshot/runtime/runsc"
)

// container is one containerd container served by this shim: a sandbox (a pod's pause
// container, or a plain ctr container) or a container joining its pod's sandbox. It is
// the lifecycle's podsnap.Task: the lifecycle drives runsc for it through the methods in
// task.go.
type container struct {
	s         *Service
	id        string
	bundle    string
	namespace string
	// sandboxID is the runsc sandbox this container lives in (its own ID for a sandbox).
	sandboxID string
	sandbox   bool
	spec      *specs.Spec
	cfg       config.Config
	runsc     *runsc.Runsc
	rootfs    string // mounted by the shim when containerd passed rootfs mounts
	init      *process
	// pod is the snapshot lifecycle of the container's pod; nil when no policy matched.
	pod *podsnap.Pod

	// execs is guarded by Service.mu.
	execs map[string]*process
}

// ready returns the container's runsc once it runs there: a call that needs the
// container in runsc (exec, ps, stats, pause, update, checkpoint) waits until its pod's
// deferred restore is resolved, or ctx ends.
func (c *container) ready(ctx context.Context) (*runsc.Runsc, error) {
	if err := c.pod.AwaitResolved(ctx, c); err != nil {
		return nil, err
	}
	return c.runsc, nil
}

// create runs `runsc create` for the container, after the lifecycle has planned its
// pod's snapshot (a sandbox) or recorded it as a container of the pod.
func (c *container) create(ctx context.Context, sb *container) error {
	if c.sandbox {
		if err := fillVolumeSources(ctx, c.bundle, c.spec, c.cfg.KubeletPodsDir); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Warn("gVisor mount hints left as they are")
		}
		c.pod = c.s.node.Plan(ctx, podsnap.Sandbox{Task: c, Spec: c.spec, Config: c.cfg,
			KeepVolumes: func(ctx context.Context) ([]string, error) {
				return keepEmptyDirs(ctx, c.bundle, c.spec, c.cfg.KubeletPodsDir)
			}})
		if c.pod.Restores() {
			c.init.markForRestore()
		}
		if err := c.Create(ctx); err != nil {
			c.pod.Delete(ctx, c)
			return err
		}
		return nil
	}
	c.pod = sb.pod
	warnSubPaths(ctx, sb.spec, c.spec, c.cfg.KubeletPodsDir, c.id)
	// A container's pid is its sandbox's until runsc creates it (and, for one that waits
	// for its pod's restore, after: the restore creates it).
	c.init.setPid(sb.init.getPid())
	if c.pod.Join(ctx, c, c.spec) {
		c.init.markForRestore()
		return nil
	}
	if err := c.Create(ctx); err != nil {
		c.pod.Leave(c)
		return err
	}
	return nil
}

// start runs the created container: the lifecycle restores it or starts it. A
// container that failed to start is done: its waiters get 255 at once, as they would
// from a process that could not be executed.
func (c *container) start(ctx context.Context) error {
	if st := c.init.info().state; !st.created() {
		return errTransition("container "+c.id, st, "start")
	}
	if err := c.pod.Start(ctx, c); err != nil {
		c.Exit(255)
		return fmt.Errorf("start container %s: %w", c.id, err)
	}
	return nil
}

// kill signals the container's init (`runsc kill`). Killing an exited container is
// NotFound, as containerd expects; one that never started ends at once.
func (c *container) kill(ctx context.Context, signal int, all bool) error {
	st := c.init.info().state
	if st == stateStopped || st == stateDeleted {
		return fmt.Errorf("%w: container %s already finished", errdefs.ErrNotFound, c.id)
	}
	if c.pod.Kill(ctx, c, signal, !st.created()) {
		return nil // it waited for its pod's restore: it ended without runsc
	}
	kctx, cancel := context.WithTimeout(ctx, runscBound)
	defer cancel()
	if st.created() {
		// A container that never started has no process to signal; after the kill it
		// can never run, so it is done.
		_ = c.runsc.Kill(kctx, c.id, runsc.KillOpts{Signal: signal, All: true})
		c.Exit(128 + signal)
		return nil
	}
	err := c.runsc.Kill(kctx, c.id, runsc.KillOpts{Signal: signal, All: all})
	if err == nil {
		return nil
	}
	if c.pod.StoppedByCheckpoint(c) {
		// The sandbox is gone, stopped by its checkpoint; the task ends as soon as the
		// abandoned upload has stopped: the kill did its job.
		return nil
	}
	if kctx.Err() == context.DeadlineExceeded && c.sandbox && signal == int(syscall.SIGKILL) {
		// The sandbox does not answer (stopped, or stuck): end it by pid.
		c.forceKill(err)
		return nil
	}
	// runsc cannot signal a process that has just exited; give its exit a moment to be
	// recorded, so the caller gets NotFound rather than runsc's error.
	select {
	case <-c.init.done:
		return fmt.Errorf("%w: container %s already finished", errdefs.ErrNotFound, c.id)
	case <-time.After(2 * time.Second):
	}
	return err
}

// delete removes an exited or never-started container from runsc, ends its snapshot
// lifecycle (an upload still running is abandoned) and unmounts its rootfs. It finishes
// in bounded time whatever runsc does.
func (c *container) delete(ctx context.Context) error {
	if st := c.init.info().state; st == stateRunning || st == statePaused {
		return errTransition("container "+c.id, st, "delete it; kill it first")
	}
	if !c.sandbox {
		// First out of its pod's restore, if it waits for one: a cold start of the pod
		// then no longer creates it in runsc behind this delete.
		c.pod.Delete(ctx, c)
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := c.runsc.Delete(dctx, c.id, runsc.DeleteOpts{Force: true}); err != nil && !runsc.IsNotExist(err) {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("runsc delete failed")
	}
	c.init.setExited(128 + 9) // no-op when it exited already; a created container never ran.
	if c.sandbox {
		c.pod.Delete(ctx, c) // an upload still running is abandoned; the work dir goes
	}
	if pio := c.init.getIO(); pio != nil {
		pio.drain(time.Second)
		pio.close()
	}
	if c.rootfs != "" {
		if err := unmountRootfs(c.rootfs); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Warn("unmount rootfs failed")
		}
	}
	c.init.transition(stateDeleted)
	return nil
}

// pause and resume pause and resume the container's processes (`runsc pause|resume`).
func (c *container) pause(ctx context.Context) error {
	r, err := c.ready(ctx)
	if err != nil {
		return err
	}
	if st := c.init.info().state; !st.can(statePaused) {
		return errTransition("container "+c.id, st, "pause")
	}
	ctx, cancel := context.WithTimeout(ctx, runscBound)
	defer cancel()
	if err := r.Pause(ctx, c.id, runsc.PauseOpts{}); err != nil {
		return err
	}
	c.init.transition(statePaused)
	return nil
}

func (c *container) resume(ctx context.Context) error {
	r, err := c.ready(ctx)
	if err != nil {
		return err
	}
	if st := c.init.info().state; st != statePaused {
		return errTransition("container "+c.id, st, "resume")
	}
	ctx, cancel := context.WithTimeout(ctx, runscBound)
	defer cancel()
	if err := r.Resume(ctx, c.id, runsc.ResumeOpts{}); err != nil {
		return err
	}
	c.init.transition(stateRunning)
	return nil
}

// checkpoint snapshots the pod of sandbox c (which a policy matched) to its store and
// returns once the snapshot is committed; opts are containerd's checkpoint options
// (checkOptions). containerd's client pauses a task before it
// checkpoints it and resumes it after; runsc checkpoints a running sandbox, so a paused
// one runs for the checkpoint and is paused again afterwards.
func (c *container) checkpoint(ctx context.Context, opts *ptypes.Any) (string, error) {
	r, err := c.ready(ctx)
	if err != nil {
		return "", err
	}
	if c.pod == nil {
		return "", fmt.Errorf("%w: pod of container %s is not matched by any PodSnapshotPolicy: nothing to checkpoint to",
			errdefs.ErrFailedPrecondition, c.id)
	}
	if err := checkOptions(opts, c.pod.Stops()); err != nil {
		return "", err
	}
	st := c.init.info().state
	if st != stateRunning && st != statePaused {
		return "", errTransition("sandbox "+c.id, st, "checkpoint")
	}
	if st == statePaused {
		if err := r.Resume(ctx, c.id, runsc.ResumeOpts{}); err != nil {
			return "", err
		}
		defer func() {
			if !c.init.exited() {
				_ = r.Pause(context.WithoutCancel(ctx), c.id, runsc.PauseOpts{})
			}
		}()
	}
	m, err := c.pod.Checkpoint(ctx)
	if err != nil {
		return "", fmt.Errorf("checkpoint of pod %s: %w", c.id, err)
	}
	return m.UUID, nil
}

// waitInit waits for a started container's init to exit and publishes TaskExit.
// `runsc wait` is authoritative; when the sandbox died before it could be asked, the
// sandbox process's own exit status (reaped by this subreaper) stands in, as it does in
// runsc itself.
func (c *container) waitInit() {
	var sandboxExit <-chan int
	if c.sandbox {
		sandboxExit = c.s.awaitPid(c.init.getPid())
	}
	status, err := c.runsc.Wait(context.Background(), c.id, runsc.WaitOpts{})
	if err != nil {
		log.G(c.s.ctx).WithError(err).WithField("id", c.id).Warn("runsc wait failed; using the sandbox's exit status")
		status = 255
		if sandboxExit != nil {
			select {
			case st := <-sandboxExit:
				status = st
			case <-time.After(10 * time.Second):
			}
		}
	}
	if c.sandbox {
		// postCheckpoint: stop ends the sandbox: the task's status is the snapshot's.
		status = c.pod.SandboxExited(status)
	}
	c.s.exitProcess(c, c.init, status)
}
