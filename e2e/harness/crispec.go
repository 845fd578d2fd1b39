package harness

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// PodConfig is the CRI PodSandboxConfig that `crictl runp FILE` reads: the fields the
// tests set, with the JSON names of the CRI API (k8s.io/cri-api runtime/v1).
type PodConfig struct {
	Metadata PodMetadata `json:"metadata"`
	Hostname string      `json:"hostname,omitempty"`
	// LogDirectory is where CRI puts the containers' logs (their LogPath is relative
	// to it); it must exist.
	LogDirectory string            `json:"log_directory,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	Linux        *PodLinux         `json:"linux,omitempty"`
}

// PodMetadata names a pod as the kubelet would: name and namespace (the
// PodSnapshotPolicy namespace) and a UID.
type PodMetadata struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	UID       string `json:"uid"`
	Attempt   uint32 `json:"attempt,omitempty"`
}

// PodLinux is the pod's Linux part.
type PodLinux struct {
	// CgroupParent is the pod's cgroup (cgroupfs form, such as /kubepods/podUID); CRI
	// puts the sandbox and the containers below it.
	CgroupParent string `json:"cgroup_parent,omitempty"`
}

// ContainerConfig is the CRI ContainerConfig that `crictl create POD FILE PODFILE`
// reads.
type ContainerConfig struct {
	Metadata    ContainerMetadata `json:"metadata"`
	Image       ImageSpec         `json:"image"`
	Command     []string          `json:"command,omitempty"`
	Args        []string          `json:"args,omitempty"`
	WorkingDir  string            `json:"working_dir,omitempty"`
	Envs        []KeyValue        `json:"envs,omitempty"`
	Mounts      []Mount           `json:"mounts,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// LogPath is the container's log file, relative to the pod's LogDirectory.
	LogPath string `json:"log_path,omitempty"`
}

// ContainerMetadata names a container within its pod.
type ContainerMetadata struct {
	Name    string `json:"name"`
	Attempt uint32 `json:"attempt,omitempty"`
}

// ImageSpec names an image, such as BusyboxImage.
type ImageSpec struct {
	Image string `json:"image"`
}

// KeyValue is an environment variable.
type KeyValue struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// Mount is a host path mounted into a container (a hostPath or emptyDir volume, as the
// kubelet passes it).
type Mount struct {
	ContainerPath string `json:"container_path"`
	HostPath      string `json:"host_path"`
	Readonly      bool   `json:"readonly,omitempty"`
}

// Write writes the pod config as JSON to a fresh file and returns its path, for
// `crictl runp`.
func (p PodConfig) Write(t testing.TB) string {
	t.Helper()
	return writeJSON(t, "pod-"+p.Metadata.Name, p)
}

// Write writes the container config as JSON to a fresh file and returns its path, for
// `crictl create`.
func (c ContainerConfig) Write(t testing.TB) string {
	t.Helper()
	return writeJSON(t, "container-"+c.Metadata.Name, c)
}

// writeJSON writes v to name+".json" in a new temporary directory and returns its path.
func writeJSON(t testing.TB, name string, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatalf("harness: encode %s: %v", name, err)
	}
	path := filepath.Join(t.TempDir(), name+".json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatalf("harness: %v", err)
	}
	return path
}
