package deploy

import (
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// wantAnnotations are the annotation patterns CRI must pass to the shim: gVisor's
// (dev.gvisor.*, e.g. mount hints) and podsnapshot's (ps-name).
var wantAnnotations = []string{"dev.gvisor.*", "podsnapshot.gke.io/*"}

// TestContainerdCRI checks the shipped containerd config: a version every containerd
// 2.x reads, the handler's runtime type, the annotations it passes and the shim config
// path, and no key containerd would ignore.
func TestContainerdCRI(t *testing.T) {
	f, err := ParseCRI(ContainerdCRI)
	if err != nil {
		t.Fatal(err)
	}
	if f.Version != 3 {
		t.Errorf("version = %d, want 3 (containerd 2.0 to 2.4 read it)", f.Version)
	}
	if n := len(f.Plugins.Runtime.Containerd.Runtimes); n != 1 {
		t.Errorf("%d runtimes, want only %q", n, RuntimeHandler)
	}
	r, err := Runtime()
	if err != nil {
		t.Fatal(err)
	}
	if r.RuntimeType != "io.containerd.podsnapshot.v1" {
		t.Errorf("runtime_type = %q, want io.containerd.podsnapshot.v1", r.RuntimeType)
	}
	if !slices.Equal(r.PodAnnotations, wantAnnotations) {
		t.Errorf("pod_annotations = %q, want %q", r.PodAnnotations, wantAnnotations)
	}
	if !slices.Equal(r.ContainerAnnotations, wantAnnotations) {
		t.Errorf("container_annotations = %q, want %q", r.ContainerAnnotations, wantAnnotations)
	}
	if r.Options.ConfigPath != "/etc/containerd/podsnapshot.toml" {
		t.Errorf("options.ConfigPath = %q, want the shim's default /etc/containerd/podsnapshot.toml", r.Options.ConfigPath)
	}
}

// TestParseCRIUnknownKey: a misspelt key is an error naming it (containerd would only
// warn and run pods without it).
func TestParseCRIUnknownKey(t *testing.T) {
	bad := strings.Replace(string(ContainerdCRI), "pod_annotations", "pod_anotations", 1)
	if _, err := ParseCRI([]byte(bad)); err == nil || !strings.Contains(err.Error(), "pod_anotations") {
		t.Fatalf("err = %v, want one naming pod_anotations", err)
	}
}

// runtimeClass is the part of a node.k8s.io/v1 RuntimeClass the shipped file may set.
type runtimeClass struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Labels      map[string]string `json:"labels,omitempty"`
		Annotations map[string]string `json:"annotations,omitempty"`
	} `json:"metadata"`
	Handler    string         `json:"handler"`
	Overhead   map[string]any `json:"overhead,omitempty"`
	Scheduling map[string]any `json:"scheduling,omitempty"`
}

// TestRuntimeClass checks the shipped RuntimeClass: its handler is the containerd
// runtime table's name, and it has no field a RuntimeClass lacks.
func TestRuntimeClass(t *testing.T) {
	var rc runtimeClass
	if err := yaml.UnmarshalStrict(RuntimeClass, &rc); err != nil {
		t.Fatalf("kubernetes/runtimeclass.yaml: %v", err)
	}
	if rc.APIVersion != "node.k8s.io/v1" || rc.Kind != "RuntimeClass" {
		t.Errorf("apiVersion %q kind %q, want node.k8s.io/v1 RuntimeClass", rc.APIVersion, rc.Kind)
	}
	if rc.Metadata.Name != RuntimeHandler || rc.Handler != RuntimeHandler {
		t.Errorf("name %q handler %q, want %q for both", rc.Metadata.Name, rc.Handler, RuntimeHandler)
	}
	f, err := ParseCRI(ContainerdCRI)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.Plugins.Runtime.Containerd.Runtimes[rc.Handler]; !ok {
		t.Errorf("handler %q is not a runtime of containerd/podsnapshot-cri.toml", rc.Handler)
	}
}
