package shim

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
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
// the sandbox tmpfs's size; a directory that is not a tmpfs mount of its own gets none.
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
	// A directory inside a tmpfs that is not its own mount (a node whose kubelet
	// directory is a tmpfs) is a disk emptyDir: no size.
	inner := filepath.Join(mem, "x", "volumes", emptyDirPlugin, "disk")
	if err := os.MkdirAll(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	if size := memoryMediumSize(inner); size != 0 {
		t.Fatalf("a plain directory inside a tmpfs got size %d", size)
	}
}

// TestWarnSubPaths: a subPath of a volume inside the sandbox is reported, one of a volume
// left on the node is not.
func TestWarnSubPaths(t *testing.T) {
	const uid = "0b3f5c1e-8d2a-4f6b-9c7d-112233445568"
	pods := "/var/lib/kubelet/pods"
	sandbox := &specs.Spec{Annotations: map[string]string{
		oci.SandboxUIDAnnotation:        uid,
		mountHintPrefix + "data.source": filepath.Join(pods, uid, "volumes", emptyDirPlugin, "data"),
		mountHintPrefix + "data.type":   "tmpfs",
	}}
	spec := &specs.Spec{Mounts: []specs.Mount{
		{Destination: "/etc/app", Source: filepath.Join(pods, uid, "volume-subpaths", "data", "main", "0")},
		{Destination: "/etc/other", Source: filepath.Join(pods, uid, "volume-subpaths", "other", "main", "1")},
	}}
	var buf bytes.Buffer
	logger := logrus.New()
	logger.SetOutput(&buf)
	warnSubPaths(log.WithLogger(context.Background(), logrus.NewEntry(logger)), sandbox, spec, pods, "c1")
	if out := buf.String(); strings.Count(out, "container mounts a subPath") != 1 || !strings.Contains(out, "emptyDir data at /etc/app") {
		t.Fatalf("warnings:\n%s", out)
	}
}
