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
// pods run under the shim: CRIBase, plus the runtime handler RuntimeHandler as
// deploy/containerd/podsnapshot-cri.toml ships it (runtime type, pod and container
// annotations), but with opts.ShimConfig.
func CRIConfig(opts CRIOptions) (string, error) {
	if opts.ShimConfig == "" || opts.CNIBinDir == "" || opts.CNIConfDir == "" || opts.SandboxImage == "" {
		return "", fmt.Errorf("CRIConfig needs a shim config, a CNI network and a sandbox image, got %+v", opts)
	}
	rt, err := deploy.Runtime()
	if err != nil {
		return "", fmt.Errorf("shipped CRI config: %w", err)
	}
	handler := criRuntime + ".containerd.runtimes." + RuntimeHandler
	return CRIBase(opts.CNIBinDir, opts.CNIConfDir, opts.SandboxImage, "") + fmt.Sprintf(`
[%[1]s]
  runtime_type = %[2]q
  pod_annotations = %[3]s
  container_annotations = %[4]s

[%[1]s.options]
  ConfigPath = %[5]q
`, handler, rt.RuntimeType, tomlStrings(rt.PodAnnotations), tomlStrings(rt.ContainerAnnotations), opts.ShimConfig), nil
}

// criRuntime is the table of containerd's CRI runtime plugin.
const criRuntime = "plugins.'io.containerd.cri.v1.runtime'"

// CRIBase returns the CRI settings every test containerd shares, as TOML tables to
// append to Config:
//
//   - CNI from cniBin and its private conf dir cniConf;
//   - network namespaces mounted under containerd's state dir, not /var/run/netns, so
//     cleanup finds and unmounts them with the rest;
//   - oom_score_adj never below containerd's own (restrict_oom_score_adj): CRI gives the
//     sandbox -998, and lowering it needs CAP_SYS_RESOURCE, which the test machines' root
//     lacks (runsc start then fails: "setting oom_score_adj to -998: permission denied");
//   - sandboxImage pinned as the sandbox image; import it before the first pod: CRI
//     would otherwise try to pull it;
//   - with registryConfig, the registry hosts directory (hosts.toml per registry).
func CRIBase(cniBin, cniConf, sandboxImage, registryConfig string) string {
	base := fmt.Sprintf(`[%[1]s]
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true

[%[1]s.cni]
  bin_dirs = [%[2]q]
  conf_dir = %[3]q

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = %[4]q
`, criRuntime, cniBin, cniConf, sandboxImage)
	if registryConfig != "" {
		base += fmt.Sprintf(`
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = %q
`, registryConfig)
	}
	return base
}

// tomlStrings writes a TOML array of strings.
func tomlStrings(ss []string) string {
	quoted := make([]string, len(ss))
	for i, s := range ss {
		quoted[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}
