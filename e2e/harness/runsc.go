package harness

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
)

// RunscBundle makes an OCI bundle in a fresh directory, without containerd: the root
// filesystem of test image name (BusyboxImage or WorkloadsImage) and a config.json from
// `runsc spec` that runs args without a terminal. edit, when not nil, may change the spec
// (a generic JSON map) before it is written, e.g. to add annotations. It returns the
// bundle directory, for `runsc --root DIR run --bundle BUNDLE ID`.
func RunscBundle(t testing.TB, name string, edit func(spec map[string]any), args ...string) string {
	t.Helper()
	img, ok := Images(t)[name]
	if !ok {
		t.Fatalf("harness: no test image %q", name)
	}
	bundle := t.TempDir()
	if err := ociarchive.ExtractRootfs(img.Archive, filepath.Join(bundle, "rootfs")); err != nil {
		t.Fatalf("harness: %v", err)
	}
	cmd := exec.Command(Binary(t, "runsc", ""), append([]string{"spec", "--bundle", bundle, "--"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("harness: %v: %v\n%s", cmd, err, out)
	}
	path := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	var spec map[string]any
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatalf("harness: %s: %v", path, err)
	}
	proc, ok := spec["process"].(map[string]any)
	if !ok {
		t.Fatalf("harness: %s: no process object", path)
	}
	// runsc spec asks for a terminal; tests capture plain stdout instead.
	proc["terminal"] = false
	if edit != nil {
		edit(spec)
	}
	if b, err = json.MarshalIndent(spec, "", "  "); err == nil {
		err = os.WriteFile(path, b, 0o644)
	}
	if err != nil {
		t.Fatalf("harness: write %s: %v", path, fmt.Errorf("%w", err))
	}
	return bundle
}

// RunscRoot returns a fresh directory for runsc's --root (state of its containers). runsc
// bind-mounts a network namespace at ROOT/null-netns and leaves it mounted after its
// containers are gone, so t.TempDir could not remove it; cleanup unmounts everything below
// the directory first. Processes mentioning it count for LeakCheck.
func RunscRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "runsc-")
	if err != nil {
		t.Fatalf("harness: runsc root: %v", err)
	}
	addLeakMarker(t, dir)
	t.Cleanup(func() {
		// Sandboxes left running keep the directory busy; kill them first (LeakCheck,
		// when used, still reports them).
		if left := reapLeftovers([]string{dir}, ShutdownGrace); len(left) > 0 {
			recordLeaks(t, left)
			t.Logf("harness: killed %d runsc process(es) left in %s:\n%s", len(left), dir, formatProcs(left))
		}
		if err := unmountBelow(dir); err != nil {
			t.Errorf("harness: %v", err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("harness: remove %s: %v", dir, err)
		}
	})
	return dir
}
