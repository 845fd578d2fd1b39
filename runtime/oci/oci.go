// Package oci reads the OCI bundle (config.json) and the annotations that containerd's
// CRI plugin and gVisor put on a container's spec.
package oci

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Annotations set by containerd's CRI plugin on every container of a pod
// (github.com/containerd/containerd/v2/internal/cri/annotations).
const (
	// ContainerTypeAnnotation is "sandbox" on the pause container, "container" on the
	// pod's other containers.
	ContainerTypeAnnotation = "io.kubernetes.cri.container-type"
	// SandboxIDAnnotation is the pod sandbox's container ID, on every container of the pod.
	SandboxIDAnnotation = "io.kubernetes.cri.sandbox-id"
	// SandboxNamespaceAnnotation is the pod's Kubernetes namespace.
	SandboxNamespaceAnnotation = "io.kubernetes.cri.sandbox-namespace"
	// SandboxNameAnnotation is the pod's name.
	SandboxNameAnnotation = "io.kubernetes.cri.sandbox-name"
	// SandboxUIDAnnotation is the pod's UID (CRI), which kubelet's volume paths hold.
	SandboxUIDAnnotation = "io.kubernetes.cri.sandbox-uid"
	// ContainerNameAnnotation is the container's name in the pod spec.
	ContainerNameAnnotation = "io.kubernetes.cri.container-name"
	// ImageNameAnnotation is the container's image reference.
	ImageNameAnnotation = "io.kubernetes.cri.image-name"

	ContainerTypeSandbox   = "sandbox"
	ContainerTypeContainer = "container"
)

// ReadSpec reads bundle/config.json.
func ReadSpec(bundle string) (*specs.Spec, error) {
	path := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read OCI spec: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("parse OCI spec %s: %w", path, err)
	}
	return &spec, nil
}

// WriteSpec writes spec to bundle/config.json atomically.
func WriteSpec(bundle string, spec *specs.Spec) error {
	data, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("encode OCI spec: %w", err)
	}
	path := filepath.Join(bundle, "config.json")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write OCI spec: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write OCI spec: %w", err)
	}
	return nil
}

// IsSandbox reports whether the container described by annotations starts a sandbox:
// a pod's pause container, or any container without CRI annotations (plain ctr use).
func IsSandbox(annotations map[string]string) bool {
	t, ok := annotations[ContainerTypeAnnotation]
	return !ok || t == ContainerTypeSandbox
}

// SandboxID returns the ID of the sandbox a container belongs to: the CRI sandbox-id
// annotation, else the container's own ID.
func SandboxID(id string, annotations map[string]string) string {
	if sb := annotations[SandboxIDAnnotation]; sb != "" {
		return sb
	}
	return id
}

// podUIDText is the form of a pod UID as the API server writes it and kubelet names the
// pod's directory: a UUID in hex.
var podUIDText = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// IsPodUID reports whether s has a pod UID's form, so that it may be joined into a path.
func IsPodUID(s string) bool { return podUIDText.MatchString(s) }

// gVisor's annotations, read by runsc.
const (
	// GVisorPrefix starts every key runsc reads.
	GVisorPrefix = "dev.gvisor."
	// MountHintPrefix starts a mount hint, dev.gvisor.spec.mount.<volume>.<field>
	// (runsc/boot/mount_hints.go), on the sandbox's spec.
	MountHintPrefix = "dev.gvisor.spec.mount."
	// EmptyDirPrefix starts gVisor's per-volume emptyDir opt-out,
	// dev.gvisor.empty-dir.<volume>.force-shared: "true" (gVisor's
	// pkg/shim/v1/utils/volumes.go): the volume stays a host directory.
	EmptyDirPrefix = "dev.gvisor.empty-dir."
)

// GVisorAnnotations returns the dev.gvisor.* annotations of a spec.
func GVisorAnnotations(annotations map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range annotations {
		if strings.HasPrefix(k, GVisorPrefix) {
			out[k] = v
		}
	}
	return out
}
