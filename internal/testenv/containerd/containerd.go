package labhost

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
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

// CRIPlugins are containerd's CRI plugins; they need a CNI network (the e2e harness
// makes a private one for the tests that ask for CRI), so callers disable them otherwise.
var CRIPlugins = []string{
	"io.containerd.grpc.v1.cri",
	"io.containerd.cri.v1.images",
	"io.containerd.cri.v1.runtime",
	"io.containerd.podsandbox.controller.v1.podsandbox",
}

// ContainerdConfig returns the config.toml of a private containerd with root and state
// directories, its gRPC socket at address (ttrpc at address+".ttrpc"), the given log level
// and disabled plugins.
//
// Version 4 is containerd 2.4's own format. In it the socket addresses live in the server
// plugins' tables: a top-level [grpc] address is silently ignored there, and containerd
// would take over the machine's /run/containerd/containerd.sock.
func ContainerdConfig(root, state, address, logLevel string, disabled []string) string {
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

// WaitContainerd waits until containerd d accepts connections on address and ping (the
// caller's `ctr version`, given 10s) succeeds. It gives up when d exits, after timeout,
// or when ctx ends.
func WaitContainerd(ctx context.Context, d *Daemon, address string, timeout time.Duration, ping func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	for {
		if d.Exited() {
			return fmt.Errorf("containerd exited: %v", d.Cmd.ProcessState)
		}
		if conn, err := net.DialTimeout("unix", address, time.Second); err == nil {
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
			return fmt.Errorf("socket %s not ready after %v", address, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
