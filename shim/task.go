package shim

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"

	"github.com/podsnapshot/podsnapshot/internal/podsnap"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
	"github.com/podsnapshot/podsnapshot/runtime/runsc"
)

// The container as the snapshot lifecycle drives it (podsnap.Task): each method is one
// runsc command or one report to containerd.
var _ podsnap.Task = (*container)(nil)

// ID is the containerd container ID.
func (c *container) ID() string { return c.id }

// Create runs `runsc create` for c with fresh stdio and records the init pid. On error
// nothing is left in runsc and the stdio is closed.
func (c *container) Create(ctx context.Context) (retErr error) {
	pio, err := newProcessIO(c.init.stdio)
	if err != nil {
		return err
	}
	c.init.mu.Lock()
	c.init.io = pio
	c.init.mu.Unlock()
	defer func() {
		if retErr != nil {
			pio.close()
		}
	}()
	pidFile := filepath.Join(c.bundle, "init.pid")
	opts := runsc.CreateOpts{PidFile: pidFile, ConsoleSocket: pio.consoleSocket()}
	if c.sandbox {
		// The sandbox process keeps the stdio it was created with as the container's.
		opts.IO = pio.runscIO()
		opts.UserLog = filepath.Join(c.bundle, "user.log")
	}
	if err := c.runsc.Create(ctx, c.id, c.bundle, opts); err != nil {
		if strings.Contains(err.Error(), "flag provided but not defined") {
			return fmt.Errorf("create container %s: %w (check runsc.flags in shim config %s)", c.id, err, c.cfg.Path)
		}
		return fmt.Errorf("create container %s: %w", c.id, err)
	}
	if c.sandbox || pio.consoleSocket() != "" {
		if err := pio.afterStart(ctx); err != nil {
			_ = c.runsc.Delete(context.WithoutCancel(ctx), c.id, runsc.DeleteOpts{Force: true})
			return err
		}
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		_ = c.runsc.Delete(context.WithoutCancel(ctx), c.id, runsc.DeleteOpts{Force: true})
		return fmt.Errorf("read pid file of %s: %w", c.id, err)
	}
	c.init.setPid(pid)
	return nil
}

// Launch runs created c: `runsc start`, or `runsc restore --background` from img when
// it is set (restoreOpts). With --background the sandbox resumes once its kernel state is
// loaded and pulls the application's pages in behind it (gVisor allows it for
// uncompressed images, which the lifecycle's always are); a page the workload touches
// first is loaded first. A container joining a sandbox gets its stdio from the runsc
// command, which is connected to containerd's afterwards.
func (c *container) Launch(ctx context.Context, img *podsnap.RestoreImage) error {
	pio := c.init.getIO()
	var io runsc.IO
	if !c.sandbox {
		io = pio.runscIO()
	}
	var err error
	if img == nil {
		err = c.runsc.Start(ctx, c.id, runsc.StartOpts{IO: io})
	} else {
		err = c.runsc.Restore(ctx, c.id, restoreOpts(img, io))
	}
	if err != nil {
		return err
	}
	if !c.sandbox && pio.consoleSocket() == "" {
		return pio.afterStart(ctx)
	}
	return nil
}

// restoreOpts are the `runsc restore` options of a restore from img with stdio io:
// always detached and --background, --direct as the lifecycle chose (a node cache
// entry's plain files, not a streaming FUSE mount).
func restoreOpts(img *podsnap.RestoreImage, io runsc.IO) runsc.RestoreOpts {
	return runsc.RestoreOpts{ImagePath: img.Dir, IO: io, Background: true, Direct: img.Direct}
}

// Destroy removes c from runsc (`runsc delete --force`) and closes its stdio.
func (c *container) Destroy(ctx context.Context) error {
	if err := c.runsc.Delete(context.WithoutCancel(ctx), c.id, runsc.DeleteOpts{Force: true}); err != nil && !runsc.IsNotExist(err) {
		return err
	}
	if pio := c.init.getIO(); pio != nil {
		pio.close()
	}
	return nil
}

// Kill signals every process of c (`runsc kill --all`).
func (c *container) Kill(ctx context.Context, signal int) error {
	return c.runsc.Kill(ctx, c.id, runsc.KillOpts{Signal: signal, All: true})
}

// WriteSpec writes c's spec plus the annotations add to its bundle, for runsc; c.spec,
// which the snapshot key is computed from, stays as containerd gave it.
func (c *container) WriteSpec(add map[string]string) error {
	spec := *c.spec
	spec.Annotations = maps.Clone(c.spec.Annotations)
	if spec.Annotations == nil {
		spec.Annotations = map[string]string{}
	}
	maps.Copy(spec.Annotations, add)
	return oci.WriteSpec(c.bundle, &spec)
}

// Started moves c to running and publishes TaskStart, once.
func (c *container) Started() {
	if c.init.transition(stateRunning) {
		c.s.send(&eventstypes.TaskStart{ContainerID: c.id, Pid: uint32(c.init.getPid())})
	}
}

// Watch waits for c's exit (and, for a sandbox, its OOMs) in the background.
func (c *container) Watch() {
	go c.waitInit()
	if c.sandbox {
		go c.s.watchOOM(c)
	}
}

// Exit ends c with status and publishes TaskExit.
func (c *container) Exit(status int) { c.s.exitProcess(c, c.init, status) }

// Exited reports whether c's init has exited.
func (c *container) Exited() bool { return c.init.exited() }

// WatchCheckpoint starts `runsc wait --checkpoint` and returns once the wait has reached
// the sandbox (or after registrationBound); the channel receives its result. gVisor
// waits for the checkpoint after the one current when the request arrives, so a watch
// that arrived after the workload's save would miss it: the lifecycle arms the watch
// before `runsc start` and waits here for it to be registered.
func (c *container) WatchCheckpoint(ctx context.Context) <-chan error {
	result := make(chan error, 1)
	started := make(chan int, 1)
	go func() {
		_, err := c.runsc.Wait(ctx, c.id, runsc.WaitOpts{Checkpoint: true, Started: func(pid int) { started <- pid }})
		result <- err
	}()
	select {
	case pid := <-started:
		if !awaitControlConnection(pid, registrationBound) {
			log.G(c.s.ctx).WithField("id", c.id).Warnf("runsc wait --checkpoint did not reach the sandbox within %s", registrationBound)
		}
	case <-time.After(registrationBound):
	}
	return result
}

// Checkpoint saves the sandbox into dir, uncompressed (the lifecycle compresses it on
// the way to storage).
func (c *container) Checkpoint(ctx context.Context, dir string, leaveRunning bool) error {
	return c.runsc.Checkpoint(ctx, c.id, runsc.CheckpointOpts{ImagePath: dir, LeaveRunning: leaveRunning, Compression: "none",
		ExcludeCommittedZeroPages: c.cfg.ExcludeZeroPages})
}

// TarRootfs writes the upper layer of c's rootfs overlay into a tar archive at file
// (`runsc tar rootfs-upper`).
func (c *container) TarRootfs(ctx context.Context, file string) error {
	return c.runsc.TarRootfsUpper(ctx, c.id, runsc.TarRootfsUpperOpts{File: file})
}

// Freeze pauses c's sandbox (`runsc pause`: every container of it) without changing
// the state containerd sees; Thaw resumes it.
func (c *container) Freeze(ctx context.Context) error {
	return c.runsc.Pause(ctx, c.id, runsc.PauseOpts{})
}

// Thaw resumes a sandbox Freeze paused (`runsc resume`).
func (c *container) Thaw(ctx context.Context) error {
	return c.runsc.Resume(ctx, c.id, runsc.ResumeOpts{})
}
