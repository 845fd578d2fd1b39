package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/containerd"
)

// CRINamespace is the containerd namespace of everything CRI makes (pods, containers)
// and of the images it uses: a CRI containerd's Namespace, so Ctr and ImportImage work
// there.
const CRINamespace = containerd.CRINamespace

// RuntimeHandler is the CRI runtime handler of the shim (`crictl runp --runtime`,
// RuntimeClass handler), as deploy/ ships it.
const RuntimeHandler = containerd.RuntimeHandler

// CRIOptions configure CRIConfig.
type CRIOptions struct {
	// ShimConfig is the shim's config file, the handler's options.ConfigPath.
	ShimConfig string
	// Network is the pods' network (NewCNINetwork).
	Network *CNINetwork
}

// CRIConfig returns the ContainerdOptions.ExtraConfig of a CRI containerd (EnableCRI,
// Namespace CRINamespace) whose pods run under the shim, with PauseImage pinned as the
// sandbox image (import it before the first pod): internal/testenv/containerd.CRIConfig,
// which says what it sets.
func CRIConfig(t testing.TB, opts CRIOptions) string {
	t.Helper()
	if opts.ShimConfig == "" || opts.Network == nil {
		t.Fatalf("harness: CRIConfig needs a shim config and a network, got %+v", opts)
	}
	cfg, err := containerd.CRIConfig(containerd.CRIOptions{ShimConfig: opts.ShimConfig,
		CNIBinDir: opts.Network.BinDir, CNIConfDir: opts.Network.ConfDir, SandboxImage: PauseImage})
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return cfg
}

// crictlConfig is the crictl config of a CRI containerd, in its directory: a person
// debugging a kept test directory can run `crictl --config DIR/crictl.yaml ps`.
func (c *Containerd) crictlConfig() string { return filepath.Join(c.Dir, "crictl.yaml") }

// CrictlTimeout bounds each Crictl call; crictl's own timeout for one CRI call is set to
// the same (its default of 2s is too short for a sandbox start).
var CrictlTimeout = 2 * time.Minute

// writeCrictlConfig points crictl at this containerd's socket for both the runtime and
// the image service, so it never reads the machine's /etc/crictl.yaml defaults.
func (c *Containerd) writeCrictlConfig() error {
	endpoint := "unix://" + c.Address
	cfg := fmt.Sprintf("runtime-endpoint: %s\nimage-endpoint: %s\ntimeout: %d\npull-image-on-create: false\n",
		endpoint, endpoint, int(CrictlTimeout/time.Second))
	if err := os.WriteFile(c.crictlConfig(), []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("write crictl config: %w", err)
	}
	return nil
}

// CrictlContext runs `crictl --config DIR/crictl.yaml args...` (runtime and image
// endpoint: this containerd's socket; EnableCRI) and returns its output and exit code,
// as CtrContext does: the error is only for a crictl that could not run at all.
func (c *Containerd) CrictlContext(ctx context.Context, args ...string) (CtrResult, error) {
	if !c.cri {
		return CtrResult{}, fmt.Errorf("crictl %s: containerd in %s runs without CRI (ContainerdOptions.EnableCRI)", strings.Join(args, " "), c.Dir)
	}
	cmd := exec.CommandContext(ctx, c.crictl, append([]string{"--config", c.crictlConfig()}, args...)...)
	cmd.Env = c.Env
	cmd.WaitDelay = 5 * time.Second
	return runTool(cmd, "crictl", args)
}

// Crictl runs crictl with args (at most CrictlTimeout) against this containerd, which
// must have been started with EnableCRI, and returns its result whatever the exit code;
// it fails the test only if crictl could not run.
func (c *Containerd) Crictl(t testing.TB, args ...string) CtrResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CrictlTimeout)
	defer cancel()
	res, err := c.CrictlContext(ctx, args...)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return res
}

// MustCrictl runs crictl with args and returns its stdout; a non-zero exit fails the
// test.
func (c *Containerd) MustCrictl(t testing.TB, args ...string) string {
	t.Helper()
	res := c.Crictl(t, args...)
	if res.ExitCode != 0 {
		t.Fatalf("harness: %v", res)
	}
	return res.Stdout
}
