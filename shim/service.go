// Package shim is containerd's task service for podsnapshot: it serves the task API over
// ttrpc for every container of one pod, runs them under one runsc sandbox, reaps children,
// connects stdio, and publishes task events. Each RPC finds its container or process,
// calls one method of it and publishes one event, as containerd's runc shim does; the
// snapshot lifecycle of the pod lives in internal/podsnap, behind the hooks those methods
// call (docs/architecture.md).
package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
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

	"github.com/podsnapshot/podsnapshot/internal/podsnap"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
	"github.com/podsnapshot/podsnapshot/runtime/runsc"
	"github.com/podsnapshot/podsnapshot/shim/manager"
)

var _ taskAPI.TTRPCTaskService = (*Service)(nil)

// Service implements containerd's task API (containerd.task.v3.Task) for the containers
// of one pod.
type Service struct {
	ctx       context.Context
	namespace string
	sd        shutdown.Service
	events    chan any
	// node is what the pods' snapshot lifecycles share (policies, stores, tuples).
	node *podsnap.Node

	// mu guards containers, every container's execs, and the pid bookkeeping below.
	// It is never held while a runsc command runs.
	mu         sync.Mutex
	containers map[string]*container
	// pidWaiters receive the exit status of a host pid the service waits for.
	pidWaiters map[int]chan int
	// unclaimed holds exits of pids nobody waited for yet: a detached `runsc exec` can
	// exit before its pid file is read.
	unclaimed map[int]runc.Exit
}

// NewService returns the task service. It reaps through containerd's reaper (the shim is
// a subreaper), reads container records from containerd at address, and publishes events
// through publisher.
func NewService(ctx context.Context, address string, publisher shim.Publisher, sd shutdown.Service) (*Service, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	info := newContainerdInfo(address)
	s := &Service{
		ctx:        ctx,
		namespace:  ns,
		sd:         sd,
		events:     make(chan any, 128),
		containers: map[string]*container{},
		pidWaiters: map[int]chan int{},
		unclaimed:  map[int]runc.Exit{},
		node: &podsnap.Node{
			Namespace: ns,
			Lookup: func(ctx context.Context, id string) (podsnap.Record, error) {
				return info.lookup(ctx, ns, id)
			},
			Monitor: reaper.Default,
		},
	}
	go s.reapExits(reaper.Default.Subscribe())
	go s.forward(publisher)
	sd.RegisterCallback(func(context.Context) error {
		close(s.events)
		return info.Close()
	})
	return s, nil
}

// RegisterTTRPC registers the task service on the shim's ttrpc server.
func (s *Service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	return nil
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

// Create creates a container: mounts its rootfs and runs `runsc create`. A sandbox
// container starts a new runsc sandbox; a container carrying the CRI sandbox-id
// annotation joins its pod's sandbox.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	c, sb, err := s.newContainer(ctx, r)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if len(r.Rootfs) > 0 {
		mounts := make([]mount.Mount, 0, len(r.Rootfs))
		for _, m := range r.Rootfs {
			mounts = append(mounts, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
		}
		if err := mountRootfs(mounts, c.rootfs); err != nil {
			return nil, errgrpc.ToGRPC(fmt.Errorf("mount rootfs of %s: %w", r.ID, err))
		}
		defer func() {
			if retErr != nil {
				_ = unmountRootfs(c.rootfs)
			}
		}()
	}
	if err := manager.WriteBundleState(r.Bundle, manager.BundleState{
		RunscPath: c.runsc.Path, RunscRoot: c.runsc.Root, RunscFlags: c.runsc.Flags, Rootfs: c.rootfs,
		WorkDir: c.cfg.WorkDir,
	}); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := c.create(ctx, sb); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	pid := c.init.getPid()
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

// newContainer makes the record of the container a Create request describes: its node
// config, spec (without the dev.gvisor.* annotations a pod may not set), runsc and, for a
// container joining a pod, the pod's sandbox.
func (s *Service) newContainer(ctx context.Context, r *taskAPI.CreateTaskRequest) (*container, *container, error) {
	cfg, err := loadConfig(r.Options)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	// containerd's -debug starts the shim at debug: log_level only ever adds detail to
	// that (trace), never takes it away.
	if lvl, err := logrus.ParseLevel(cfg.LogLevel); err == nil && (lvl > logrus.GetLevel() || !logrus.IsLevelEnabled(logrus.DebugLevel)) {
		logrus.SetLevel(lvl)
	}
	spec, err := oci.ReadSpec(r.Bundle)
	if err != nil {
		return nil, nil, err
	}
	if dropped, err := podsnap.DropPodGVisorAnnotations(r.Bundle, spec); err != nil {
		return nil, nil, err
	} else if len(dropped) > 0 {
		log.G(ctx).WithField("id", r.ID).Warnf("podsnapshot: ignored annotations %v: a pod may set only gVisor's mount hints (dev.gvisor.spec.mount.<volume>.{source,type,share,options,directfs}) and dev.gvisor.empty-dir.<volume>.force-shared", dropped)
	}
	c := &container{
		s:         s,
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
		runsc: &runsc.Runsc{
			Path:    cfg.Runsc.Path,
			Root:    runsc.DefaultRoot(cfg.Runsc.Root, s.namespace),
			LogPath: filepath.Join(r.Bundle, "runsc.log"),
			Flags:   runscFlags(cfg.Runsc.Flags),
			Monitor: reaper.Default,
		},
	}
	if len(r.Rootfs) > 0 {
		c.rootfs = filepath.Join(r.Bundle, "rootfs")
	}
	if c.sandbox {
		return c, nil, nil
	}
	s.mu.Lock()
	sb := s.containers[c.sandboxID]
	s.mu.Unlock()
	if sb == nil {
		return nil, nil, fmt.Errorf("%w: container %s: sandbox %s (annotation %s) is not served by this shim",
			errdefs.ErrFailedPrecondition, r.ID, c.sandboxID, oci.SandboxIDAnnotation)
	}
	return c, sb, nil
}

// Start starts a created container (`runsc start`, or its restore) or an exec'd process
// (`runsc exec`).
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		if err := s.startExec(ctx, c, p); err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		return &taskAPI.StartResponse{Pid: uint32(p.getPid())}, nil
	}
	if err := c.start(ctx); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &taskAPI.StartResponse{Pid: uint32(p.getPid())}, nil
}

// exitProcess records a process's exit, lets its output drain, and publishes TaskExit.
func (s *Service) exitProcess(c *container, p *process, status int) {
	if pio := p.getIO(); pio != nil {
		// Output written just before exit must reach containerd before TaskExit does.
		pio.drain(2 * time.Second)
	}
	if !p.setExited(status) {
		return
	}
	in := p.info()
	id := p.execID
	if id == "" {
		id = c.id
	}
	log.G(s.ctx).WithFields(log.Fields{"id": c.id, "exec": p.execID, "status": in.exitStatus}).Info("process exited")
	s.send(&eventstypes.TaskExit{
		ContainerID: c.id,
		ID:          id,
		Pid:         uint32(in.pid),
		ExitStatus:  in.exitStatus,
		ExitedAt:    protobuf.ToTimestamp(in.exitedAt),
	})
}

// Delete deletes an exited or never-started container (`runsc delete`, unmount rootfs)
// or an exec'd process's record.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		if err := s.deleteExec(c, p); err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
	} else {
		if err := c.delete(ctx); err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		s.mu.Lock()
		delete(s.containers, c.id)
		s.mu.Unlock()
	}
	in := p.info()
	if r.ExecID == "" {
		s.send(&eventstypes.TaskDelete{
			ContainerID: c.id,
			Pid:         uint32(in.pid),
			ExitStatus:  in.exitStatus,
			ExitedAt:    protobuf.ToTimestamp(in.exitedAt),
		})
	}
	return &taskAPI.DeleteResponse{Pid: uint32(in.pid), ExitStatus: in.exitStatus, ExitedAt: protobuf.ToTimestamp(in.exitedAt)}, nil
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

// ResizePty resizes a process's terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*ptypes.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	pio := p.getIO()
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
	in := p.info()
	return &taskAPI.StateResponse{
		ID:         p.containerID,
		ExecID:     p.execID,
		Bundle:     c.bundle,
		Pid:        uint32(in.pid),
		Status:     in.state.status(),
		Stdin:      p.stdio.stdin,
		Stdout:     p.stdio.stdout,
		Stderr:     p.stdio.stderr,
		Terminal:   p.stdio.terminal,
		ExitStatus: in.exitStatus,
		ExitedAt:   protobuf.ToTimestamp(in.exitedAt),
	}, nil
}

// Pause pauses a running container (`runsc pause`).
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if err := c.pause(ctx); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	s.send(&eventstypes.TaskPaused{ContainerID: c.id})
	return &ptypes.Empty{}, nil
}

// Resume resumes a paused container (`runsc resume`).
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if err := c.resume(ctx); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
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
	if r.ExecID != "" {
		err = s.killExec(ctx, c, p, int(r.Signal))
	} else {
		err = c.kill(ctx, int(r.Signal), r.All)
	}
	if err != nil {
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
	rs, err := c.ready(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	ctx, cancel := context.WithTimeout(ctx, runscBound)
	defer cancel()
	pids, err := rs.Ps(ctx, c.id, runsc.PsOpts{})
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
	if pio := p.getIO(); pio != nil && r.Stdin {
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
	sb, err := s.get(c.sandboxID)
	if err != nil {
		return nil, err
	}
	uuid, err := sb.checkpoint(ctx, r.Options)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	log.G(ctx).WithField("snapshot", uuid).Infof("manual checkpoint of %s committed", r.ID)
	s.send(&eventstypes.TaskCheckpointed{ContainerID: r.ID, Checkpoint: uuid})
	return &ptypes.Empty{}, nil
}

// Update changes a container's resources (`runsc update`).
func (s *Service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*ptypes.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	var res specs.LinuxResources
	if err := typeurl.UnmarshalTo(r.Resources, &res); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("%w: resources: %w", errdefs.ErrInvalidArgument, err))
	}
	rs, err := c.ready(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	ctx, cancel := context.WithTimeout(ctx, runscBound)
	defer cancel()
	if err := rs.Update(ctx, c.id, runsc.UpdateOpts{Resources: &res}); err != nil {
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
	in := p.info()
	return &taskAPI.WaitResponse{ExitStatus: in.exitStatus, ExitedAt: protobuf.ToTimestamp(in.exitedAt)}, nil
}

// Stats returns the container's resource usage as cgroup v1 metrics, from
// `runsc events --stats`.
func (s *Service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	rs, err := c.ready(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	ctx, cancel := context.WithTimeout(ctx, runscBound)
	defer cancel()
	st, err := rs.Stats(ctx, c.id, runsc.StatsOpts{})
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
		resp.TaskPid = uint32(c.init.getPid())
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
