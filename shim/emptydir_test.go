package shim

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/podsnapshot/podsnapshot/runtime/oci"
)

// TestKeepEmptyDirs: each empty emptyDir of the pod gets the hints that put it inside the
// sandbox, written to the bundle; a volume the pod hints itself (by name or source), one
// opted out with force-shared, one that holds files, and a pod without Kubernetes are left
// alone; a directory holding only a runsc filestore counts as empty.
func TestKeepEmptyDirs(t *testing.T) {
	const uid = "0b3f5c1e-8d2a-4f6b-9c7d-112233445566"
	pods := t.TempDir()
	dir := filepath.Join(pods, uid, "volumes", emptyDirPlugin)
	for _, v := range []string{"cache", "weights", "mine", "bysource", "optout", "full", "Not_A_Label"} {
		if err := os.MkdirAll(filepath.Join(dir, v), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "full", "kept"), []byte("x"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "weights", filestorePrefix+"old-sandbox"), nil, 0o644))
	spec := &specs.Spec{Annotations: map[string]string{
		oci.SandboxUIDAnnotation:                  uid,
		mountHintPrefix + "mine.type":             "bind",
		mountHintPrefix + "mine.share":            "shared",
		mountHintPrefix + "other.source":          filepath.Join(dir, "bysource"),
		forceSharedPrefix + "optout.force-shared": "true",
	}}
	bundle := t.TempDir()
	moved, err := keepEmptyDirs(context.Background(), bundle, spec, pods)
	must(err)
	if want := []string{"cache", "weights"}; !reflect.DeepEqual(moved, want) {
		t.Fatalf("moved %v, want %v", moved, want)
	}
	written, err := oci.ReadSpec(bundle)
	must(err)
	for _, v := range moved {
		for field, want := range map[string]string{"source": filepath.Join(dir, v), "type": "tmpfs", "share": "pod"} {
			if got := written.Annotations[mountHintPrefix+v+"."+field]; got != want {
				t.Errorf("%s.%s = %q in the bundle, want %q", v, field, got, want)
			}
		}
		if _, ok := written.Annotations[mountHintPrefix+v+".options"]; ok {
			t.Errorf("%s: options set for a volume on disk", v)
		}
	}
	if got := spec.Annotations[mountHintPrefix+"mine.type"]; got != "bind" {
		t.Errorf("the pod's own hint changed: %q", got)
	}
	for _, v := range []string{"bysource", "optout", "full"} {
		if _, ok := spec.Annotations[mountHintPrefix+v+".type"]; ok {
			t.Errorf("volume %s got a hint", v)
		}
	}

	// A pod run without Kubernetes, and one whose emptyDir directory does not exist.
	for _, ann := range []map[string]string{{}, {oci.SandboxUIDAnnotation: "9b3f5c1e-8d2a-4f6b-9c7d-112233445566"}} {
		moved, err := keepEmptyDirs(context.Background(), t.TempDir(), &specs.Spec{Annotations: ann}, pods)
		if err != nil || moved != nil {
			t.Fatalf("annotations %v: moved %v, err %v", ann, moved, err)
		}
	}
	if _, err := keepEmptyDirs(context.Background(), t.TempDir(), &specs.Spec{Annotations: map[string]string{oci.SandboxUIDAnnotation: "../x"}}, pods); err == nil {
		t.Fatal("a UID that is not a UUID was accepted")
	}
}

// TestKeepEmptyDirsMemory: an emptyDir of medium Memory (kubelet's tmpfs) gets its size as
// the sandbox tmpfs's size.
func TestKeepEmptyDirsMemory(t *testing.T) {
	const uid = "0b3f5c1e-8d2a-4f6b-9c7d-112233445567"
	pods := t.TempDir()
	mem := filepath.Join(pods, uid, "volumes", emptyDirPlugin, "mem")
	if err := os.MkdirAll(mem, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mem, "tmpfs", 0, "size=8m"); err != nil {
		t.Skipf("cannot mount a tmpfs (not root?): %v", err)
	}
	defer unix.Unmount(mem, unix.MNT_DETACH)
	spec := &specs.Spec{Annotations: map[string]string{oci.SandboxUIDAnnotation: uid}}
	if _, err := keepEmptyDirs(context.Background(), t.TempDir(), spec, pods); err != nil {
		t.Fatal(err)
	}
	if got := spec.Annotations[mountHintPrefix+"mem.options"]; got != "size=8388608" {
		t.Fatalf("mem.options %q, want size=8388608", got)
	}
}
