package containerd

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/podsnapshot/podsnapshot/deploy"
)

// CRINamespace is the containerd namespace of everything CRI makes (pods, containers)
// and of the images it uses: import images there for CRI (or a kubelet) to find them.
const CRINamespace = "k8s.io"

// RuntimeHandler is the CRI runtime handler of the shim (`crictl runp --runtime`,
// RuntimeClass handler), as deploy/ ships it.
const RuntimeHandler = deploy.RuntimeHandler

// CRIOptions configure CRIConfig. All are required.
type CRIOptions struct {
	// ShimConfig is the shim's config file, the handler's options.ConfigPath.
	ShimConfig string
	// CNIBinDir and CNIConfDir are the pods' network (internal/testenv/cni: Network's
	// BinDir and ConfDir).
	CNIBinDir, CNIConfDir string
	// SandboxImage is the pinned sandbox (pause) image, such as ociarchive.PauseImage;
	// import it before the first pod: CRI would otherwise try to pull it.
	SandboxImage string
}

// CRIConfig returns the Options.ExtraConfig of a CRI containerd (Options.CRI) whose
// pods run under the shim:
//
//   - the runtime handler RuntimeHandler as deploy/containerd/podsnapshot-cri.toml ships
//     it (runtime type, pod and container annotations), but with opts.ShimConfig;
//   - CNI from opts' bin dir and private conf dir;
//   - network namespaces mounted under containerd's state dir, not /var/run/netns, so
//     cleanup finds and unmounts them with the rest;
//   - oom_score_adj never below containerd's own (restrict_oom_score_adj): CRI gives the
//     sandbox -998, and lowering it needs CAP_SYS_RESOURCE, which the test machines' root
//     lacks (runsc start then fails: "setting oom_score_adj to -998: permission denied");
//   - opts.SandboxImage pinned as the sandbox image.
func CRIConfig(opts CRIOptions) (string, error) {
	if opts.ShimConfig == "" || opts.CNIBinDir == "" || opts.CNIConfDir == "" || opts.SandboxImage == "" {
		return "", fmt.Errorf("CRIConfig needs a shim config, a CNI network and a sandbox image, got %+v", opts)
	}
	rt, err := deploy.Runtime()
	if err != nil {
		return "", fmt.Errorf("shipped CRI config: %w", err)
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
`, runtime, opts.CNIBinDir, opts.CNIConfDir, handler, rt.RuntimeType,
		tomlStrings(rt.PodAnnotations), tomlStrings(rt.ContainerAnnotations), opts.ShimConfig, opts.SandboxImage), nil
}

// tomlStrings writes a TOML array of strings.
func tomlStrings(ss []string) string {
	quoted := make([]string, len(ss))
	for i, s := range ss {
		quoted[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}
