package shim

import (
	"bytes"
	"fmt"
	"maps"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/typeurl/v2"

	"github.com/podsnapshot/podsnapshot/internal/config"
)

// loadConfig reads the node config named by the task's runtime options
// (runtimeoptions.v1.Options): the file at ConfigPath, as CRI and `ctr
// --runtime-config-path` send it; else ConfigBody, the runtime's inline `options` table
// that containerd's CRI sends when it has no ConfigPath (the same keys as the file);
// else the default file.
func loadConfig(opts *ptypes.Any) (config.Config, error) {
	if opts == nil || opts.GetTypeUrl() == "" {
		return config.Load("")
	}
	var ro runtimeoptions.Options
	if err := typeurl.UnmarshalTo(opts, &ro); err != nil {
		return config.Config{}, fmt.Errorf("runtime options of type %s (want runtimeoptions.v1.Options with ConfigPath): %w", opts.GetTypeUrl(), err)
	}
	if path := ro.GetConfigPath(); path != "" {
		if len(bytes.TrimSpace(ro.GetConfigBody())) > 0 {
			return config.Config{}, fmt.Errorf("runtime options set both ConfigPath (%s) and an inline config (ConfigBody): use one", path)
		}
		return config.Load(path)
	}
	if body := ro.GetConfigBody(); len(bytes.TrimSpace(body)) > 0 {
		cfg, err := config.Parse(body)
		if err != nil {
			return cfg, fmt.Errorf("shim config in the runtime's options table (runtimeoptions ConfigBody): %w", err)
		}
		return cfg, nil
	}
	return config.Load("")
}

// runscFlags are the global runsc flags of the shim's commands: the config's, plus
// allow-rootfs-tar-annotation, without which runsc refuses the root file system layer a
// rootfs-only restore gives a container (podsnap.AnnRootfsUpperTar). A pod cannot set
// that annotation itself: the shim drops it from every spec
// (podsnap.DropPodGVisorAnnotations). It shapes no saved state, so it is not part of the
// compatibility tuple.
func runscFlags(cfg map[string]string) map[string]string {
	out := maps.Clone(cfg)
	if out == nil {
		out = map[string]string{}
	}
	out["allow-rootfs-tar-annotation"] = "true"
	return out
}
