// Package deploy holds the configuration shipped for installing podsnapshot on a
// Kubernetes node (see README.md here): containerd's CRI runtime handler and the
// RuntimeClass that selects it. The files are embedded so that tests check the very
// bytes a user copies, and so that the end-to-end CRI tests configure their containerd
// with the same runtime type and annotation lists (see e2e/harness.CRIConfig).
package deploy

import (
	_ "embed"
	"fmt"

	"github.com/BurntSushi/toml"
)

// ContainerdCRI is containerd/podsnapshot-cri.toml: the runtime handler for containerd's
// CRI plugin, to import from /etc/containerd/config.toml.
//
//go:embed containerd/podsnapshot-cri.toml
var ContainerdCRI []byte

// RuntimeClass is kubernetes/runtimeclass.yaml: the node.k8s.io/v1 RuntimeClass whose
// handler is RuntimeHandler.
//
//go:embed kubernetes/runtimeclass.yaml
var RuntimeClass []byte

// AgentDaemonSet is kubernetes/agent.yaml: the podsnapshot-agent DaemonSet.
//
//go:embed kubernetes/agent.yaml
var AgentDaemonSet []byte

// RuntimeHandler is the CRI runtime handler (the runtime's table name in containerd's
// config, and the RuntimeClass's handler).
const RuntimeHandler = "podsnapshot"

// CRIFile is the part of a containerd config that ContainerdCRI sets.
type CRIFile struct {
	Version int `toml:"version"`
	Plugins struct {
		Runtime struct {
			Containerd struct {
				Runtimes map[string]CRIRuntime `toml:"runtimes"`
			} `toml:"containerd"`
		} `toml:"io.containerd.cri.v1.runtime"`
	} `toml:"plugins"`
}

// CRIRuntime is one runtime handler of containerd's CRI plugin.
type CRIRuntime struct {
	RuntimeType          string   `toml:"runtime_type"`
	PodAnnotations       []string `toml:"pod_annotations"`
	ContainerAnnotations []string `toml:"container_annotations"`
	Options              struct {
		// ConfigPath is the shim config file (runtimeoptions.v1.Options.ConfigPath).
		ConfigPath string `toml:"ConfigPath"`
	} `toml:"options"`
}

// ParseCRI decodes a containerd CRI config of the ContainerdCRI form. Keys it does not
// know are an error naming them, so a misspelt key in the shipped file cannot go
// unnoticed (containerd itself only warns and ignores it).
func ParseCRI(data []byte) (CRIFile, error) {
	var f CRIFile
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return f, fmt.Errorf("containerd CRI config: %w", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return f, fmt.Errorf("containerd CRI config: unknown keys %v", und)
	}
	return f, nil
}

// Runtime returns the podsnapshot runtime handler of the shipped ContainerdCRI.
func Runtime() (CRIRuntime, error) {
	f, err := ParseCRI(ContainerdCRI)
	if err != nil {
		return CRIRuntime{}, err
	}
	r, ok := f.Plugins.Runtime.Containerd.Runtimes[RuntimeHandler]
	if !ok {
		return CRIRuntime{}, fmt.Errorf("containerd CRI config: no runtime %q", RuntimeHandler)
	}
	return r, nil
}
