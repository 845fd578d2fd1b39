package shim

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/podsnapshot/podsnapshot/runtime/oci"
)

func TestFillVolumeSources(t *testing.T) {
	pods := t.TempDir()
	vol := filepath.Join(pods, "uid-1", "volumes", "kubernetes.io~empty-dir", "shared")
	if err := os.MkdirAll(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	bundle := t.TempDir()
	spec := &specs.Spec{Version: "1.2.0", Annotations: map[string]string{
		oci.SandboxUIDAnnotation:                  "uid-1",
		"dev.gvisor.spec.mount.shared.type":       "tmpfs",
		"dev.gvisor.spec.mount.shared.share":      "pod",
		"dev.gvisor.spec.mount.given.type":        "tmpfs",
		"dev.gvisor.spec.mount.given.source":      "/elsewhere",
		"dev.gvisor.spec.mount.bad.name.too.type": "tmpfs",
	}}
	if err := oci.WriteSpec(bundle, spec); err != nil {
		t.Fatal(err)
	}
	if err := fillVolumeSources(context.Background(), bundle, spec, pods); err != nil {
		t.Fatal(err)
	}
	onDisk, err := oci.ReadSpec(bundle)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*specs.Spec{spec, onDisk} {
		if got := s.Annotations["dev.gvisor.spec.mount.shared.source"]; got != vol {
			t.Errorf("shared source = %q, want %q", got, vol)
		}
		if got := s.Annotations["dev.gvisor.spec.mount.given.source"]; got != "/elsewhere" {
			t.Errorf("a given source was changed to %q", got)
		}
	}

	// A volume that is not there: an error naming it, and the spec unchanged.
	spec2 := &specs.Spec{Annotations: map[string]string{
		oci.SandboxUIDAnnotation:            "uid-1",
		"dev.gvisor.spec.mount.shared.type": "tmpfs",
		"dev.gvisor.spec.mount.gone.type":   "tmpfs",
	}}
	err = fillVolumeSources(context.Background(), t.TempDir(), spec2, pods)
	if err == nil || !strings.Contains(err.Error(), "volume gone") {
		t.Fatalf("missing volume: %v", err)
	}
	if _, ok := spec2.Annotations["dev.gvisor.spec.mount.shared.source"]; ok {
		t.Error("a failed fill changed the spec")
	}
	// No pod UID: an error naming the annotation.
	spec3 := &specs.Spec{Annotations: map[string]string{"dev.gvisor.spec.mount.x.type": "tmpfs"}}
	if err := fillVolumeSources(context.Background(), t.TempDir(), spec3, pods); err == nil || !strings.Contains(err.Error(), oci.SandboxUIDAnnotation) {
		t.Fatalf("no uid: %v", err)
	}
}
