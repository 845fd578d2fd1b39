// Package manager is the part of the shim containerd runs as a short-lived command:
// `shim start`, which starts (or joins) the pod's serving shim and prints its address,
// `shim delete`, which cleans up after a shim that died, and `shim -info`. It is the
// whole of containerd-shim-podsnapshot-v1, a small binary that starts in about the time
// containerd's runc shim does; the serving shim is podsnapshot-shimd (DaemonBinary),
// which links the stores and the snapshot logic and whose start-up is two to three
// times longer (Go package initialisation of the Cloud Storage client's dependencies).
// Every pod's first container runs `shim start` once, and every other container of the
// pod once more, so only the serving shim's start is paid in full, once per pod.
package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"syscall"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"

	"github.com/podsnapshot/podsnapshot/internal/workdir"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
	"github.com/podsnapshot/podsnapshot/runtime/runsc"
	"github.com/podsnapshot/podsnapshot/version"
)

// RuntimeName is the containerd runtime type served by this shim.
const RuntimeName = oci.RuntimeType

// ShimBinary is the name containerd runs for RuntimeName; DaemonBinary, the serving
// shim, lies in the same directory. The serving shim runs with ShimBinary as its argv[0],
// so that it shows and is found (uninstall, leak checks) under the shim's name.
const (
	ShimBinary   = "containerd-shim-podsnapshot-v1"
	DaemonBinary = "podsnapshot-shimd"
)

// Manager implements containerd's shim.Shim: it starts (or joins) the long-running shim
// process for a container and cleans up after a shim that died.
type Manager struct{}

// Name returns the runtime name.
func (Manager) Name() string { return RuntimeName }

// Start is run by containerd as `shim start` in the container's bundle directory. All
// containers of one pod share one shim: the socket address is derived from the CRI
// sandbox-id annotation, and a container whose pod's shim is already listening joins it.
func (Manager) Start(ctx context.Context, params *bootapi.BootstrapParams) (_ *bootapi.BootstrapResult, retErr error) {
	result := &bootapi.BootstrapResult{Version: 3, Protocol: "ttrpc"}
	id := params.GetInstanceID()
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	spec, err := oci.ReadSpec(cwd)
	if err != nil {
		return nil, err
	}
	group := oci.SandboxID(id, spec.Annotations)

	socketDir := params.GetSocketDir()
	if socketDir == "" {
		socketDir = filepath.Join(defaults.DefaultStateDir, "s")
	}
	address, err := shim.CreateSocketAddress(ctx, socketDir, params.GetContainerdGrpcAddress(), group, false)
	if err != nil {
		return nil, err
	}
	listener, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return nil, fmt.Errorf("create shim socket %s: %w", address, err)
		}
		if shim.CanConnect(address) {
			// The pod's shim is serving: this container joins it.
			result.Address = address
			return result, nil
		}
		if err := shim.RemoveSocket(address); err != nil {
			return nil, fmt.Errorf("remove stale shim socket %s: %w", address, err)
		}
		if listener, err = shim.NewSocket(address); err != nil {
			return nil, fmt.Errorf("create shim socket %s: %w", address, err)
		}
	}
	defer func() {
		if retErr != nil {
			listener.Close()
			_ = shim.RemoveSocket(address)
		}
	}()
	f, err := listener.File()
	if err != nil {
		return nil, err
	}
	defer f.Close()

	daemon, err := daemonPath()
	if err != nil {
		return nil, err
	}
	args := []string{"-namespace", ns, "-id", id, "-address", params.GetContainerdGrpcAddress()}
	if params.GetLogLevel() <= bootapi.LogLevel_LOG_LEVEL_DEBUG {
		args = append(args, "-debug")
	}
	cmd := exec.Command(daemon, args...)
	cmd.Args[0] = ShimBinary
	cmd.Dir = cwd
	cmd.Env = os.Environ()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// fd 3: the listening socket, which pkg/shim serves when no -socket is given.
	cmd.ExtraFiles = []*os.File{f}

	goruntime.LockOSThread()
	err = cmd.Start()
	goruntime.UnlockOSThread()
	if err != nil {
		return nil, fmt.Errorf("start shim: %w", err)
	}
	// The server outlives this `shim start` process; Wait only collects it if it dies
	// while we are still here.
	go func() { _ = cmd.Wait() }()
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		// Seen on hosts where /proc/PID/oom_score_adj is not writable (EACCES): the shim
		// works, it is just as likely as containerd to be OOM-killed.
		log.G(ctx).WithError(err).Warn("could not adjust the shim's OOM score; continuing")
	}
	result.Address = address
	return result, nil
}

// Stop is run by containerd as `shim delete` after the serving shim died: it force-deletes
// the container from runsc and unmounts its rootfs, using the state saved in the bundle.
func (Manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	cwd, err := os.Getwd()
	if err != nil {
		return shim.StopStatus{}, err
	}
	bundle := filepath.Join(filepath.Dir(cwd), id)
	st, err := readBundleState(bundle)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return shim.StopStatus{}, err
	}
	if st.RunscRoot != "" {
		r := &runsc.Runsc{Path: st.RunscPath, Root: st.RunscRoot, Flags: st.RunscFlags}
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := r.Delete(dctx, id, runsc.DeleteOpts{Force: true}); err != nil && !runsc.IsNotExist(err) {
			log.G(ctx).WithError(err).Warn("runsc delete of an orphaned container failed")
		}
	}
	rootfs := st.Rootfs
	if rootfs == "" {
		rootfs = filepath.Join(bundle, "rootfs")
	}
	if err := mount.UnmountRecursive(rootfs, 0); err != nil {
		log.G(ctx).WithError(err).Warn("unmount rootfs")
	}
	// The dead shim's pod work dir (its lock went with it), and any other dead shim's:
	// a FUSE mount nobody serves, checkpoint images that never reached storage.
	workdir.Clean(ctx, st.WorkDir)
	return shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(syscall.SIGKILL)}, nil
}

// Info describes the runtime to containerd (`shim -info`).
func (Manager) Info(ctx context.Context, _ io.Reader) (*types.RuntimeInfo, error) {
	return &types.RuntimeInfo{
		Name:    RuntimeName,
		Version: &types.RuntimeVersion{Version: version.Version, Revision: version.Revision},
	}, nil
}

// daemonPath is the serving shim's binary: DaemonBinary in this binary's directory, or
// this binary itself when it is the serving shim (it can run `start` as well). Errors:
// the binary is missing, naming where it was looked for.
func daemonPath() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	if filepath.Base(self) == DaemonBinary {
		return self, nil
	}
	daemon := filepath.Join(filepath.Dir(self), DaemonBinary)
	if _, err := os.Stat(daemon); err != nil {
		return "", fmt.Errorf("the serving shim %s, installed next to %s: %w", daemon, self, err)
	}
	return daemon, nil
}

// BundleState is what the serving shim persists in the bundle so that `shim delete` (run
// by containerd after the serving shim died) can clean up runsc state without the config.
type BundleState struct {
	RunscPath  string            `json:"runscPath"`
	RunscRoot  string            `json:"runscRoot"`
	RunscFlags map[string]string `json:"runscFlags,omitempty"`
	Rootfs     string            `json:"rootfs,omitempty"`
	// WorkDir is the node config's work_dir, where a pod's work dir is left behind when
	// its shim dies (swept by `shim delete`).
	WorkDir string `json:"workDir,omitempty"`
}

// bundleStateFile is BundleState's file in the bundle, as JSON.
const bundleStateFile = "podsnapshot-state.json"

// WriteBundleState writes st into bundle.
func WriteBundleState(bundle string, st BundleState) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(bundle, bundleStateFile), data, 0o600); err != nil {
		return fmt.Errorf("write bundle state: %w", err)
	}
	return nil
}

// readBundleState reads bundle's state; an error wraps os.ErrNotExist when there is none.
func readBundleState(bundle string) (BundleState, error) {
	var st BundleState
	data, err := os.ReadFile(filepath.Join(bundle, bundleStateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("parse %s: %w", filepath.Join(bundle, bundleStateFile), err)
	}
	return st, nil
}
