// Package containerd runs a private containerd for a test environment: its config (its
// own root, state and socket under one directory, the plugins that cannot work here
// disabled), its start as a daemon that dies with its parent, and the wait until it
// answers. The e2e harness and the lab (demo, bench) both start theirs through it.
package containerd

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv"
	"github.com/podsnapshot/podsnapshot/internal/testenv/hostproc"
)

// DisabledPlugins are the containerd plugins that cannot work on this kind of machine or
// would reach outside a private containerd's directory.
var DisabledPlugins = []string{
	// Snapshotters for filesystems not in use here; they only log failures.
	"io.containerd.snapshotter.v1.btrfs",
	"io.containerd.snapshotter.v1.zfs",
	"io.containerd.snapshotter.v1.devmapper",
	"io.containerd.snapshotter.v1.aufs",
	// Tracing exporters need an endpoint.
	"io.containerd.tracing.processor.v1.otlp",
	"io.containerd.internal.v1.tracing",
	// NRI listens on a fixed, machine-wide socket (/var/run/nri/nri.sock), which two
	// containerds would fight over.
	"io.containerd.nri.v1.nri",
	// opt manages a fixed directory (/opt/containerd), outside ours.
	"io.containerd.internal.v1.opt",
}

// CRIPlugins are containerd's CRI plugins; they need a CNI network (internal/testenv/cni
// makes a private one; see CRIConfig), so callers disable them otherwise.
var CRIPlugins = []string{
	"io.containerd.grpc.v1.cri",
	"io.containerd.cri.v1.images",
	"io.containerd.cri.v1.runtime",
	"io.containerd.podsandbox.controller.v1.podsandbox",
}

// Config returns the config.toml of a private containerd with root and state
// directories, its gRPC socket at address (ttrpc at address+".ttrpc"), the given log level
// and disabled plugins.
//
// Version 4 is containerd 2.4's own format. In it the socket addresses live in the server
// plugins' tables: a top-level [grpc] address is silently ignored there, and containerd
// would take over the machine's /run/containerd/containerd.sock.
func Config(root, state, address, logLevel string, disabled []string) string {
	quoted := make([]string, len(disabled))
	for i, p := range disabled {
		quoted[i] = strconv.Quote(p)
	}
	return fmt.Sprintf(`version = 4
root = %q
state = %q
disabled_plugins = [%s]

[debug]
  level = %q

[plugins.'io.containerd.server.v1.grpc']
  address = %q

[plugins.'io.containerd.server.v1.ttrpc']
  address = %q
`, root, state, strings.Join(quoted, ", "), logLevel, address, address+".ttrpc")
}

// Options configure Start.
type Options struct {
	// Binary is the containerd to run; default: containerd in testenv.DepsBin.
	Binary string
	// Dir holds everything of this containerd (see Daemon). It must be short, under
	// /tmp: unix socket paths must stay under 108 bytes, and shims derive longer paths
	// from containerd's address.
	Dir string
	// LogLevel of containerd; default "info".
	LogLevel string
	// CRI keeps containerd's CRI plugins; they want a CNI network, so they are off
	// otherwise.
	CRI bool
	// ExtraConfig is TOML appended to the generated config (version 4, containerd 2.4's);
	// it must not redefine a table the generated config defines.
	ExtraConfig string
	// Env is containerd's environment, and so its shims' (they inherit it); nil: this
	// process's.
	Env []string
}

// Daemon is a private containerd started by Start.
type Daemon struct {
	*hostproc.Daemon
	Dir     string
	Root    string // containerd's root (content store, snapshots, metadata)
	State   string // containerd's state (bundles, sockets, FIFOs of tasks)
	Address string // the gRPC socket (ttrpc: Address+".ttrpc")
	Config  string // the generated config.toml
	LogPath string // containerd's stdout and stderr
}

// Start writes the config of a private containerd below opts.Dir and starts it in its
// own process group, so a Ctrl-C reaches only the caller, whose cleanup stops containerd
// in order (hostproc.StartDaemon). It does not wait for the socket: see Wait.
func Start(opts Options) (*Daemon, error) {
	if opts.Binary == "" {
		bin, err := testenv.Tool("containerd", "")
		if err != nil {
			return nil, err
		}
		opts.Binary = bin
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	d := &Daemon{
		Dir:     opts.Dir,
		Root:    filepath.Join(opts.Dir, "root"),
		State:   filepath.Join(opts.Dir, "state"),
		Address: filepath.Join(opts.Dir, "containerd.sock"),
		Config:  filepath.Join(opts.Dir, "config.toml"),
		LogPath: filepath.Join(opts.Dir, "containerd.log"),
	}
	// Plugins that cannot work here or would reach outside the directory.
	disabled := append([]string(nil), DisabledPlugins...)
	if !opts.CRI {
		disabled = append(disabled, CRIPlugins...)
	}
	config := Config(d.Root, d.State, d.Address, opts.LogLevel, disabled)
	if opts.ExtraConfig != "" {
		config += "\n" + opts.ExtraConfig + "\n"
	}
	if err := os.WriteFile(d.Config, []byte(config), 0o644); err != nil {
		return nil, fmt.Errorf("write containerd config: %w", err)
	}
	logFile, err := os.Create(d.LogPath)
	if err != nil {
		return nil, fmt.Errorf("containerd log: %w", err)
	}
	defer logFile.Close() // the child has its own copy
	cmd := exec.Command(opts.Binary, "--config", d.Config)
	cmd.Env = opts.Env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if d.Daemon, err = hostproc.StartDaemon(cmd); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	return d, nil
}

// Wait waits until containerd accepts connections on its socket and ping (the caller's
// `ctr version`, given 10s) succeeds. It gives up when containerd exits, after timeout,
// or when ctx ends.
func (d *Daemon) Wait(ctx context.Context, timeout time.Duration, ping func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	for {
		if d.Exited() {
			return fmt.Errorf("containerd exited: %v", d.Cmd.ProcessState)
		}
		if conn, err := net.DialTimeout("unix", d.Address, time.Second); err == nil {
			conn.Close()
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := ping(pctx)
			cancel()
			if err == nil {
				return nil
			}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("start containerd: %w", context.Cause(ctx))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("socket %s not ready after %v", d.Address, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
