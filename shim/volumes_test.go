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

const (
	testUID  = "0b5c1f7e-3a41-4e0c-9d7a-2f6b8c9e1a23"
	otherUID = "7d2e9a10-55c3-4b8f-a1d6-0e4f3b2c1d99"
)

func TestFillVolumeSources(t *testing.T) {
	pods := t.TempDir()
	vol := filepath.Join(pods, testUID, "volumes", "kubernetes.io~empty-dir", "shared")
	if err := os.MkdirAll(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	bundle := t.TempDir()
	spec := &specs.Spec{Version: "1.2.0", Annotations: map[string]string{
		oci.SandboxUIDAnnotation:                  testUID,
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
		oci.SandboxUIDAnnotation:            testUID,
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

// TestFillVolumeSourcesHostile: a pod's UID and volume names are not patterns and not
// paths. Each case must fail, with an error naming the value, and never hand the pod the
// volume of another pod (otherUID's secret) or of another of its volumes.
func TestFillVolumeSourcesHostile(t *testing.T) {
	pods := t.TempDir()
	for _, d := range []string{
		filepath.Join(pods, testUID, "volumes", "kubernetes.io~empty-dir", "shared"),
		filepath.Join(pods, testUID, "volumes", "kubernetes.io~empty-dir", "cache"),
		filepath.Join(pods, otherUID, "volumes", "kubernetes.io~secret", "token"),
		filepath.Join(pods, otherUID, "volumes", "kubernetes.io~empty-dir", "data"),
	} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A symlink in the pod's own volumes, pointing at the other pod's secret.
	link := filepath.Join(pods, testUID, "volumes", "kubernetes.io~empty-dir", "sneaky")
	if err := os.Symlink(filepath.Join(pods, otherUID, "volumes", "kubernetes.io~secret", "token"), link); err != nil {
		t.Fatal(err)
	}
	// A volume present under two plugins: ambiguous.
	for _, p := range []string{"kubernetes.io~empty-dir", "kubernetes.io~configmap"} {
		os.MkdirAll(filepath.Join(pods, testUID, "volumes", p, "twice"), 0o755)
	}
	long := strings.Repeat("x", 5000)
	for _, c := range []struct {
		desc, uid, volume, want string
	}{
		{"star volume", testUID, "*", `"*"`},
		{"class volume", testUID, "[a-z]hared", `"[a-z]hared"`},
		{"question volume", testUID, "share?", `"share?"`},
		{"dotdot volume", testUID, "..", ""}, // a dot in the name: not a hint at all, see below
		{"star uid", "*", "token", `"*"`},
		{"class uid", "[0-9a-f]*", "token", `"[0-9a-f]*"`},
		{"dotdot uid", "..", "shared", `".."`},
		{"path uid", otherUID + "/../" + testUID, "shared", oci.SandboxUIDAnnotation},
		{"uppercase volume", testUID, "Shared", `"Shared"`},
		{"symlinked volume", testUID, "sneaky", "volume sneaky"},
		{"two plugins", testUID, "twice", "found 2"},
		{"long uid", long, "shared", "(5000 bytes)"},
	} {
		t.Run(c.desc, func(t *testing.T) {
			key := mountHintPrefix + c.volume + ".type"
			spec := &specs.Spec{Annotations: map[string]string{
				oci.SandboxUIDAnnotation: c.uid,
				key:                      "tmpfs",
			}}
			err := fillVolumeSources(context.Background(), t.TempDir(), spec, pods)
			if src, ok := spec.Annotations[mountHintPrefix+c.volume+".source"]; ok {
				t.Fatalf("source filled with %s", src)
			}
			if c.want == "" { // ".." has a dot: not a volume name, the hint is left alone
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not name %s", err, c.want)
			}
			if len(err.Error()) > 400 {
				t.Errorf("error of %d bytes", len(err.Error()))
			}
		})
	}
}
