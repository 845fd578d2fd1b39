package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/deploy"
)

// CRINamespace is the containerd namespace of everything CRI makes (pods, containers)
// and of the images it uses: a CRI containerd's Namespace, so Ctr and ImportImage work
// there.
const CRINamespace = "k8s.io"

// RuntimeHandler is the CRI runtime handler of the shim (`crictl runp --runtime`,
// RuntimeClass handler), as deploy/ ships it.
const RuntimeHandler = deploy.RuntimeHandler

// CRIOptions configure CRIConfig.
type CRIOptions struct {
	// ShimConfig is the shim's config file, the handler's options.ConfigPath.
	ShimConfig string
	// Network is the pods' network (NewCNINetwork).
	Network *CNINetwork
}

// CRIConfig returns the ContainerdOptions.ExtraConfig of a CRI containerd (EnableCRI,
// Namespace CRINamespace) whose pods run under the shim:
//
//   - the runtime handler RuntimeHandler as deploy/containerd/podsnapshot-cri.toml ships
//     it (runtime type, pod and container annotations), but with the test's shim config;
//   - CNI from opts.Network: its plugin dir and its private conf dir;
//   - network namespaces mounted under containerd's state dir, not /var/run/netns, so
//     cleanup finds and unmounts them with the rest;
//   - oom_score_adj never below containerd's own (restrict_oom_score_adj): CRI gives the
//     sandbox -998, and lowering it needs CAP_SYS_RESOURCE, which the test machines' root
//     lacks (runsc start then fails: "setting oom_score_adj to -998: permission denied");
//   - PauseImage pinned as the sandbox image (import it before the first pod: CRI would
//     otherwise try to pull it).
func CRIConfig(t testing.TB, opts CRIOptions) string {
	t.Helper()
	if opts.ShimConfig == "" || opts.Network == nil {
		t.Fatalf("harness: CRIConfig needs a shim config and a network, got %+v", opts)
	}
	rt, err := deploy.Runtime()
	if err != nil {
		t.Fatalf("harness: shipped CRI config: %v", err)
	}
	const runtime = "plugins.'io.containerd.cri.v1.runtime'"
	handler := runtime + ".containerd.runtimes." + RuntimeHandler
	return fmt.Sprintf(`[%[1]s]
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true

[%[1]s.cni]
  bin_dirs = [%[2]q]
  conf_dir = %[3]q

[%[4]s]
  runtime_type = %[5]q
  pod_annotations = %[6]s
  container_annotations = %[7]s

[%[4]s.options]
  ConfigPath = %[8]q

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = %[9]q
`, runtime, opts.Network.BinDir, opts.Network.ConfDir, handler, rt.RuntimeType,
		tomlStrings(rt.PodAnnotations), tomlStrings(rt.ContainerAnnotations), opts.ShimConfig, PauseImage)
}

// tomlStrings writes a TOML array of strings.
func tomlStrings(ss []string) string {
	quoted := make([]string, len(ss))
	for i, s := range ss {
		quoted[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
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
