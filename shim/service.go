// Package shim is containerd's task service for podsnapshot: it serves the task API over
// ttrpc for every container of one pod, runs them under one runsc sandbox, reaps children,
// connects stdio, and publishes task events.
package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"

	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/policy"
	"github.com/podsnapshot/podsnapshot/internal/config"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
	"github.com/podsnapshot/podsnapshot/runtime/runsc"
	"github.com/podsnapshot/podsnapshot/storage"
)

var _ taskAPI.TTRPCTaskService = (*Service)(nil)

// Service implements containerd's task API (containerd.task.v3.Task) for the containers
// of one pod.
type Service struct {
	ctx       context.Context
	namespace string
	// address is containerd's gRPC address, for reading container labels.
	address string
	sd      shutdown.Service
	events  chan any

	// mu guards containers, every container's execs, and the pid bookkeeping below.
	// It is never held while a runsc command runs.
	mu         sync.Mutex
	containers map[string]*container
	// pidWaiters receive the exit status of a host pid the service waits for.
	pidWaiters map[int]chan int
	// unclaimed holds exits of pids nobody waited for yet: a detached `runsc exec` can
	// exit before its pid file is read.
	unclaimed map[int]runc.Exit

	// cacheMu guards the caches below, which live as long as the shim.
	cacheMu sync.Mutex
	loaders map[string]*policy.Loader
	stores  map[string]storage.Store
	tuples  map[string]compat.Tuple
}

// NewService returns the task service. It reaps through containerd's reaper (the shim is
// a subreaper) and publishes events through publisher.
func NewService(ctx context.Context, address string, publisher shim.Publisher, sd shutdown.Service) (*Service, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	s := &Service{
		ctx:        ctx,
		namespace:  ns,
		address:    address,
		sd:         sd,
		events:     make(chan any, 128),
		containers: map[string]*container{},
		pidWaiters: map[int]chan int{},
		unclaimed:  map[int]runc.Exit{},
		loaders:    map[string]*policy.Loader{},
		stores:     map[string]storage.Store{},
		tuples:     map[string]compat.Tuple{},
	}
	go s.reapExits(reaper.Default.Subscribe())
	go s.forward(publisher)
	sd.RegisterCallback(func(context.Context) error {
		close(s.events)
		return nil
	})
	return s, nil
}

// RegisterTTRPC registers the task service on the shim's ttrpc server.
func (s *Service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	return nil
}

// reapExits hands every reaped child's exit to whoever waits for that pid, or keeps it
// for a minute for a waiter that has not registered yet.
func (s *Service) reapExits(exits chan runc.Exit) {
	for e := range exits {
		s.mu.Lock()
		if ch, ok := s.pidWaiters[e.Pid]; ok {
			delete(s.pidWaiters, e.Pid)
			ch <- e.Status
		} else {
			s.unclaimed[e.Pid] = e
			for pid, old := range s.unclaimed {
				if time.Since(old.Timestamp) > time.Minute {
					delete(s.unclaimed, pid)
				}
			}
		}
		s.mu.Unlock()
	}
}

// awaitPid returns a channel that receives pid's exit status once it is reaped.
func (s *Service) awaitPid(pid int) <-chan int {
	ch := make(chan int, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.unclaimed[pid]; ok {
		delete(s.unclaimed, pid)
		ch <- e.Status
		return ch
	}
	s.pidWaiters[pid] = ch
	return ch
}

func (s *Service) send(evt any) {
	defer func() { _ = recover() }() // events closed at shutdown: drop late events.
	s.events <- evt
}

func (s *Service) get(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "container %s not found", id)
	}
	return c, nil
}

func (s *Service) getProcess(id, execID string) (*container, *process, error) {
	c, err := s.get(id)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "process %s of container %s not found", execID, id)
	}
	return c, p, nil
}

// loadConfig reads the shim config named by the task's runtime options (ConfigPath, in
// containerd's runtimeoptions.v1.Options as CRI and `ctr --runtime-config-path` send it),
// else the default file.
func loadConfig(opts *ptypes.Any) (config.Config, error) {
	path := ""
	if opts != nil && opts.GetTypeUrl() != "" {
		var ro runtimeoptions.Options
		if err := typeurl.UnmarshalTo(opts, &ro); err != nil {
			return config.Config{}, fmt.Errorf("runtime options of type %s (want runtimeoptions.v1.Options with ConfigPath): %w", opts.GetTypeUrl(), err)
		}
		path = ro.GetConfigPath()
	}
	return config.Load(path)
}

// Create creates a container: mounts its rootfs and runs `runsc create`. A sandbox
// container starts a new runsc sandbox; a container carrying the CRI sandbox-id
// annotation joins its pod's sandbox.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	cfg, err := loadConfig(r.Options)
	if err != nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "%s", err.Error())
	}
	if lvl, err := logrus.ParseLevel(cfg.LogLevel); err == nil && !logrus.IsLevelEnabled(logrus.DebugLevel) {
		logrus.SetLevel(lvl)
	}
	spec, err := oci.ReadSpec(r.Bundle)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if dropped, err := dropInternalAnnotations(r.Bundle, spec); err != nil {
		return nil, errgrpc.ToGRPC(err)
	} else if len(dropped) > 0 {
		log.G(ctx).WithField("id", r.ID).Warnf("podsnapshot: ignored annotations %v: only the shim sets gVisor's internal annotations", dropped)
	}
	c := &container{
		id:        r.ID,
		bundle:    r.Bundle,
		namespace: s.namespace,
		sandboxID: oci.SandboxID(r.ID, spec.Annotations),
		sandbox:   oci.IsSandbox(spec.Annotations),
		spec:      spec,
		cfg:       cfg,
		execs:     map[string]*process{},
		init: newProcess(r.ID, "", stdio{
			stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal,
		}, nil),
	}
	c.runsc = &runsc.Runsc{
		Path:    cfg.Runsc.Path,
		Root:    runsc.DefaultRoot(cfg.Runsc.Root, s.namespace),
		LogPath: filepath.Join(r.Bundle, "runsc.log"),
		Flags:   cfg.Runsc.Flags,
		Monitor: reaper.Default,
	}
	var sb *container // the sandbox c joins
	if !c.sandbox {
		s.mu.Lock()
		sb = s.containers[c.sandboxID]
		s.mu.Unlock()
		if sb == nil {
			return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition,
				"container %s: sandbox %s (annotation %s) is not served by this shim", r.ID, c.sandboxID, oci.SandboxIDAnnotation)
		}
	}

	if len(r.Rootfs) > 0 {
		c.rootfs = filepath.Join(r.Bundle, "rootfs")
		if err := os.MkdirAll(c.rootfs, 0o711); err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		mounts := make([]mount.Mount, 0, len(r.Rootfs))
		for _, m := range r.Rootfs {
			mounts = append(mounts, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
		}
		if err := mount.All(mounts, c.rootfs); err != nil {
			return nil, errgrpc.ToGRPC(fmt.Errorf("mount rootfs of %s: %w", r.ID, err))
		}
		defer func() {
			if retErr != nil {
				_ = mount.UnmountRecursive(c.rootfs, 0)
			}
		}()
	}
	if err := writeBundleState(r.Bundle, bundleState{
		RunscPath: c.runsc.Path, RunscRoot: c.runsc.Root, RunscFlags: c.runsc.Flags, Rootfs: c.rootfs,
	}); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	deferred := false
	if c.sandbox {
		if err := fillVolumeSources(ctx, c.bundle, c.spec, cfg.KubeletPodsDir); err != nil {
			log.G(ctx).WithError(err).WithField("id", r.ID).Warn("gVisor mount hints left as they are")
		}
		c.snap = s.planSnapshot(ctx, c)
	} else if sb.snap != nil {
		s.describeMember(ctx, c)
		// A container of a pod whose restore waits for its containers is recorded, not
		// created in runsc (podrestore.go).
		deferred = s.joinDeferred(ctx, sb, c)
	}
	if !deferred {
		if sb != nil {
			if err := enableMemberTrigger(sb, c); err != nil {
				log.G(ctx).WithError(err).WithField("id", r.ID).Warn("the container cannot trigger the pod's checkpoint")
			}
		}
		if err := s.runscCreate(ctx, c); err != nil {
			c.snap.cleanup()
			return nil, errgrpc.ToGRPC(err)
		}
	}
	if sb != nil && sb.snap != nil {
		sb.snap.addMember(c)
	}
	pid := c.init.pid
	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()
	log.G(ctx).WithFields(log.Fields{"id": r.ID, "sandbox": c.sandboxID, "pid": pid}).Info("created container")
	s.send(&eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint:  r.Checkpoint,
		Pid:         uint32(pid),
	})
	return &taskAPI.CreateTaskResponse{Pid: uint32(pid)}, nil
}

// runscCreate runs `runsc create` for c with fresh stdio and records the init pid. On
// error nothing is left in runsc and the stdio is closed.
func (s *Service) runscCreate(ctx context.Context, c *container) (retErr error) {
	pio, err := newProcessIO(c.init.stdio)
	if err != nil {
		return err
	}
	c.init.io = pio
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
	c.init.mu.Lock()
	c.init.pid = pid
	c.init.mu.Unlock()
	return nil
}

// Start starts a created container (`runsc start`) or an exec'd process (`runsc exec`).
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		return s.startExec(ctx, c, p)
	}
	if _, status, _, _ := p.snapshot(); status != task.Status_CREATED {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s is %s, not created", r.ID, status)
	}
	if handled, err := s.startDeferred(ctx, c); handled {
		// A container of a pod whose restore waits: recorded; the last one restores
		// the pod (podrestore.go).
		if err != nil {
			return nil, errgrpc.ToGRPC(fmt.Errorf("start container %s: %w", c.id, err))
		}
		return &taskAPI.StartResponse{Pid: uint32(c.init.pid)}, nil
	}
	if c.sandbox && s.deferRestore(ctx, c) {
		// The sandbox waits for its containers before it restores.
		p.setStatus(task.Status_RUNNING)
		s.send(&eventstypes.TaskStart{ContainerID: c.id, Pid: uint32(p.pid)})
		return &taskAPI.StartResponse{Pid: uint32(p.pid)}, nil
	}
	if err := s.restoreOrStart(ctx, c); err != nil {
		// A container that failed to start is done: its waiters get 255 at once, as
		// they would from a process that could not be executed.
		s.exitProcess(c, p, 255)
		return nil, errgrpc.ToGRPC(fmt.Errorf("start container %s: %w", c.id, err))
	}
	p.setStatus(task.Status_RUNNING)
	s.send(&eventstypes.TaskStart{ContainerID: c.id, Pid: uint32(p.pid)})
	s.running(c)
	return &taskAPI.StartResponse{Pid: uint32(p.pid)}, nil
}

// waitInit waits for a started container's init to exit and publishes TaskExit.
// `runsc wait` is authoritative; when the sandbox died before it could be asked, the
// sandbox process's own exit status (reaped by this subreaper) stands in, as it does in
// runsc itself.
func (s *Service) waitInit(c *container) {
	p := c.init
	var sandboxExit <-chan int
	if c.sandbox {
		sandboxExit = s.awaitPid(p.pid)
	}
	status, err := c.runsc.Wait(context.Background(), c.id, runsc.WaitOpts{})
	if err != nil {
		log.G(s.ctx).WithError(err).WithField("id", c.id).Warn("runsc wait failed; using the sandbox's exit status")
		status = 255
		if sandboxExit != nil {
			select {
			case st := <-sandboxExit:
				status = st
			case <-time.After(10 * time.Second):
			}
		}
	}
	if code, ok := c.snap.stoppedByCheckpoint(c); ok {
		// postCheckpoint: stop ended the sandbox: the task's status is the snapshot's.
		status = code
	}
	s.exitProcess(c, p, status)
}

// exitProcess records a process's exit, lets its output drain, and publishes TaskExit.
func (s *Service) exitProcess(c *container, p *process, status int) {
	if p.io != nil {
		// Output written just before exit must reach containerd before TaskExit does.
		p.io.drain(2 * time.Second)
	}
	if !p.setExited(status) {
		return
	}
	_, _, exitStatus, exitedAt := p.snapshot()
	id := p.execID
	if id == "" {
		id = c.id
	}
	log.G(s.ctx).WithFields(log.Fields{"id": c.id, "exec": p.execID, "status": exitStatus}).Info("process exited")
	s.send(&eventstypes.TaskExit{
		ContainerID: c.id,
		ID:          id,
		Pid:         uint32(p.pid),
		ExitStatus:  exitStatus,
		ExitedAt:    protobuf.ToTimestamp(exitedAt),
	})
}

// Delete deletes an exited or never-started container (`runsc delete`, unmount rootfs)
// or an exec'd process's record.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	pid, status, _, _ := p.snapshot()
	if status == task.Status_RUNNING || status == task.Status_PAUSED {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "process %s of container %s is %s; kill it first", r.ExecID, r.ID, status)
	}
	if r.ExecID != "" {
		if p.io != nil {
			p.io.close()
		}
		s.mu.Lock()
		delete(c.execs, r.ExecID)
		s.mu.Unlock()
		_, _, exitStatus, exitedAt := p.snapshot()
		return &taskAPI.DeleteResponse{Pid: uint32(pid), ExitStatus: exitStatus, ExitedAt: protobuf.ToTimestamp(exitedAt)}, nil
	}

	s.leaveDeferred(ctx, c)
	// Delete and Kill finish in bounded time whatever runsc does.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := c.runsc.Delete(dctx, c.id, runsc.DeleteOpts{Force: true}); err != nil && !runsc.IsNotExist(err) {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("runsc delete failed")
	}
	p.setExited(int(128 + 9)) // no-op when it exited already; a created container never ran.
	if c.snap != nil {
		// An upload still running is abandoned (no manifest is written) and given a
		// few seconds to delete what it uploaded, so Delete finishes in bounded time.
		c.snap.abandon(9)
		c.snap.waitCommits(10 * time.Second)
		c.snap.cleanup()
	}
	if p.io != nil {
		p.io.drain(time.Second)
		p.io.close()
	}
	if c.rootfs != "" {
		if err := mount.UnmountRecursive(c.rootfs, 0); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Warn("unmount rootfs failed")
		}
	}
	if !c.sandbox {
		if sb, err := s.get(c.sandboxID); err == nil && sb.snap != nil {
			sb.snap.removeMember(c)
		}
	}
	s.mu.Lock()
	delete(s.containers, c.id)
	s.mu.Unlock()
	_, _, exitStatus, exitedAt := p.snapshot()
	s.send(&eventstypes.TaskDelete{
		ContainerID: c.id,
		Pid:         uint32(pid),
		ExitStatus:  exitStatus,
		ExitedAt:    protobuf.ToTimestamp(exitedAt),
	})
	return &taskAPI.DeleteResponse{Pid: uint32(pid), ExitStatus: exitStatus, ExitedAt: protobuf.ToTimestamp(exitedAt)}, nil
}

// Exec records a process to run in a container; Start runs it.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*ptypes.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if c.init.exited() {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s is not running", r.ID)
	}
	var spec specs.Process
	if err := typeurl.UnmarshalTo(r.Spec, &spec); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("%w: exec process spec: %w", errdefs.ErrInvalidArgument, err))
	}
	p := newProcess(r.ID, r.ExecID, stdio{stdin: r.Stdin, stdout: r.Stdout, stderr: r.Stderr, terminal: r.Terminal}, &spec)
	s.mu.Lock()
	if _, ok := c.execs[r.ExecID]; ok {
		s.mu.Unlock()
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "exec %s of container %s", r.ExecID, r.ID)
	}
	c.execs[r.ExecID] = p
	s.mu.Unlock()
	s.send(&eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return &ptypes.Empty{}, nil
}

func (s *Service) startExec(ctx context.Context, c *container, p *process) (*taskAPI.StartResponse, error) {
	if _, status, _, _ := p.snapshot(); status != task.Status_CREATED {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %s is %s, not created", p.execID, status)
	}
	if err := s.awaitResolved(ctx, c); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	pio, err := newProcessIO(p.stdio)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	p.mu.Lock()
	p.io = pio
	p.mu.Unlock()
	pidFile := filepath.Join(c.bundle, p.execID+".pid")
	internalPidFile := filepath.Join(c.bundle, p.execID+"-internal.pid")
	defer os.Remove(pidFile)
	defer os.Remove(internalPidFile)
	err = c.runsc.Exec(ctx, c.id, *p.spec, c.bundle, runsc.ExecOpts{
		IO: pio.runscIO(), PidFile: pidFile, InternalPidFile: internalPidFile, ConsoleSocket: pio.consoleSocket(),
	})
	if err != nil {
		pio.close()
		p.setExited(255)
		return nil, errgrpc.ToGRPC(fmt.Errorf("exec %s in %s: %w", p.execID, c.id, err))
	}
	if err := pio.afterStart(ctx); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("exec %s: read pid file: %w", p.execID, err))
	}
	internalPid, _ := runc.ReadPidFile(internalPidFile)
	p.mu.Lock()
	p.pid, p.internalPid = pid, internalPid
	p.mu.Unlock()
	exit := s.awaitPid(pid)
	p.setStatus(task.Status_RUNNING)
	s.send(&eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: p.execID, Pid: uint32(pid)})
	go func() { s.exitProcess(c, p, <-exit) }()
	return &taskAPI.StartResponse{Pid: uint32(pid)}, nil
}

// ResizePty resizes a process's terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*ptypes.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	pio := p.io
	p.mu.Unlock()
	if pio == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "process has no io yet")
	}
	if err := pio.resize(r.Width, r.Height); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("%w: %w", errdefs.ErrFailedPrecondition, err))
	}
	return &ptypes.Empty{}, nil
}

// State returns a process's state.
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	pid, status, exitStatus, exitedAt := p.snapshot()
	return &taskAPI.StateResponse{
		ID:         p.containerID,
		ExecID:     p.execID,
		Bundle:     c.bundle,
		Pid:        uint32(pid),
		Status:     status,
		Stdin:      p.stdio.stdin,
		Stdout:     p.stdio.stdout,
		Stderr:     p.stdio.stderr,
		Terminal:   p.stdio.terminal,
		ExitStatus: exitStatus,
		ExitedAt:   protobuf.ToTimestamp(exitedAt),
	}, nil
}

// Pause pauses a running container (`runsc pause`).
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if err := s.awaitResolved(ctx, c); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := c.runsc.Pause(ctx, c.id, runsc.PauseOpts{}); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	c.init.setStatus(task.Status_PAUSED)
	s.send(&eventstypes.TaskPaused{ContainerID: c.id})
	return &ptypes.Empty{}, nil
}

// Resume resumes a paused container (`runsc resume`).
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if err := s.awaitResolved(ctx, c); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := c.runsc.Resume(ctx, c.id, runsc.ResumeOpts{}); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	c.init.setStatus(task.Status_RUNNING)
	s.send(&eventstypes.TaskResumed{ContainerID: c.id})
	return &ptypes.Empty{}, nil
}

// Kill signals a process (`runsc kill`). Killing an exited process is NotFound, as
// containerd expects.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*ptypes.Empty, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	_, status, _, _ := p.snapshot()
	if status == task.Status_STOPPED {
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "process already finished")
	}
	if r.ExecID == "" && s.killDeferred(ctx, c, int(r.Signal)) {
		return &ptypes.Empty{}, nil // runsc never ran it: it ended without runsc
	}
	kctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if r.ExecID == "" && c.snap != nil && c.snap.stop {
		// A stop-mode sandbox killed while it saves or uploads its snapshot ends now,
		// as a killed task: the snapshot is abandoned.
		c.snap.abandon(int(r.Signal))
	}
	if status == task.Status_CREATED && r.ExecID == "" {
		// A container that never started has no process to signal; after the kill it
		// can never run, so it is done, and the snapshot it was to restore is not needed.
		c.snap.abortDownload()
		_ = c.runsc.Kill(kctx, c.id, runsc.KillOpts{Signal: int(r.Signal), All: true})
		s.exitProcess(c, p, 128+int(r.Signal))
		return &ptypes.Empty{}, nil
	}
	if r.ExecID != "" {
		p.mu.Lock()
		internalPid := p.internalPid
		p.mu.Unlock()
		if internalPid == 0 {
			return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %s has not started", r.ExecID)
		}
		err = c.runsc.Kill(kctx, c.id, runsc.KillOpts{Signal: int(r.Signal), Pid: internalPid})
	} else {
		err = c.runsc.Kill(kctx, c.id, runsc.KillOpts{Signal: int(r.Signal), All: r.All})
	}
	if err != nil {
		if r.ExecID == "" && c.snap != nil && c.snap.stop && c.snap.tookCheckpoint.Load() {
			// The sandbox is gone, stopped by its checkpoint; the task ends as soon
			// as the abandoned upload has stopped: the kill did its job.
			return &ptypes.Empty{}, nil
		}
		// runsc cannot signal a process that has just exited; give its exit a moment to
		// be recorded, so the caller gets NotFound rather than runsc's error.
		select {
		case <-p.done:
			return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "process already finished")
		case <-time.After(2 * time.Second):
		}
		return nil, errgrpc.ToGRPC(err)
	}
	return &ptypes.Empty{}, nil
}

// Pids lists the container's processes (pids inside the sandbox, as `runsc ps` reports).
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if err := s.awaitResolved(ctx, c); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	pids, err := c.runsc.Ps(ctx, c.id, runsc.PsOpts{})
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	out := make([]*task.ProcessInfo, 0, len(pids))
	for _, pid := range pids {
		out = append(out, &task.ProcessInfo{Pid: uint32(pid)})
	}
	return &taskAPI.PidsResponse{Processes: out}, nil
}

// CloseIO closes a process's stdin.
func (s *Service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*ptypes.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	pio := p.io
	p.mu.Unlock()
	if pio != nil && r.Stdin {
		pio.closeStdin()
	}
	return &ptypes.Empty{}, nil
}

// Checkpoint is containerd's checkpoint call (`ctr task checkpoint`, `podsnapshot
// checkpoint`): it snapshots the container's whole pod to the storage of the policy that
// matched the pod, and returns once the snapshot is committed. containerd's image path is
// left empty: the snapshot lives in the pod snapshot store, not in containerd's content.
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if err := s.awaitResolved(ctx, c); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	sb, err := s.get(c.sandboxID)
	if err != nil {
		return nil, err
	}
	if sb.snap == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition,
			"pod of container %s is not matched by any PodSnapshotPolicy: nothing to checkpoint to", r.ID)
	}
	_, status, _, _ := sb.init.snapshot()
	if status != task.Status_RUNNING && status != task.Status_PAUSED {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "sandbox %s is %s, not running", sb.id, status)
	}
	if status == task.Status_PAUSED {
		// containerd's client pauses a task before checkpointing it and resumes it after;
		// runsc checkpoints a running sandbox, so it runs for the checkpoint and is
		// paused again afterwards.
		if err := sb.runsc.Resume(ctx, sb.id, runsc.ResumeOpts{}); err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		defer func() {
			if !sb.init.exited() {
				_ = sb.runsc.Pause(context.WithoutCancel(ctx), sb.id, runsc.PauseOpts{})
			}
		}()
	}
	m, err := s.checkpointNow(ctx, sb)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("checkpoint of pod %s: %w", sb.id, err))
	}
	log.G(ctx).WithField("snapshot", m.UUID).Infof("manual checkpoint of %s committed", r.ID)
	s.send(&eventstypes.TaskCheckpointed{ContainerID: r.ID, Checkpoint: m.UUID})
	return &ptypes.Empty{}, nil
}

// Update changes a container's resources (`runsc update`).
func (s *Service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*ptypes.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if err := s.awaitResolved(ctx, c); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	var res specs.LinuxResources
	if err := typeurl.UnmarshalTo(r.Resources, &res); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("%w: resources: %w", errdefs.ErrInvalidArgument, err))
	}
	if err := c.runsc.Update(ctx, c.id, runsc.UpdateOpts{Resources: &res}); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &ptypes.Empty{}, nil
}

// Wait blocks until a process exits and returns its status.
func (s *Service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, errgrpc.ToGRPC(ctx.Err())
	}
	_, _, exitStatus, exitedAt := p.snapshot()
	return &taskAPI.WaitResponse{ExitStatus: exitStatus, ExitedAt: protobuf.ToTimestamp(exitedAt)}, nil
}

// Stats returns the container's resource usage as cgroup v1 metrics, from
// `runsc events --stats`.
func (s *Service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if err := s.awaitResolved(ctx, c); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	st, err := c.runsc.Stats(ctx, c.id, runsc.StatsOpts{})
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	anyStats, err := typeurl.MarshalAnyToProto(metricsFromRunsc(st))
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &taskAPI.StatsResponse{Stats: anyStats}, nil
}

// Connect returns the shim's and the task's pids.
func (s *Service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid())}
	if c, err := s.get(r.ID); err == nil {
		resp.TaskPid = uint32(c.init.pid)
	}
	return resp, nil
}

// Shutdown stops the shim once it serves no container.
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*ptypes.Empty, error) {
	s.mu.Lock()
	n := len(s.containers)
	s.mu.Unlock()
	if n > 0 {
		return &ptypes.Empty{}, nil
	}
	s.sd.Shutdown()
	return &ptypes.Empty{}, nil
}
