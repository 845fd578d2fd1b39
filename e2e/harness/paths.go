// Package harness runs the e2e tests' moving parts: a private containerd with our shim on
// its PATH, ctr, the test images, fake-gcs-server, and a check that no shim, runsc or
// gofer process outlives its test; for CRI tests also containerd's CRI plugins with a
// private CNI network, and crictl.
//
// Everything it starts is private to one test (own directories, socket, port) and is
// stopped and reaped at the test's cleanup, so tests may run in parallel. Tools come from
// the folder `make deps` fills (_deps/bin, or $DEPS_DIR/bin); a missing tool fails the
// test with "run `make deps`" rather than skipping it, so a broken setup cannot pass.
//
// A test binary should run its tests through Main, which removes the artifacts built once
// per binary (images, the shim):
//
//	func TestMain(m *testing.M) { harness.Main(m) }
package harness

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/podsnapshot/podsnapshot/internal/testenv"
	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
)

// Fixed names (docs/architecture.md), defined once elsewhere.
const (
	RuntimeType  = oci.RuntimeType
	ShimBinary   = testenv.ShimBinary
	DaemonBinary = testenv.DaemonBinary
)

// RepoRoot returns the repository's root (testenv.RepoRoot): the directory of the
// go.mod declaring this module, above the working directory (a test runs in its
// package's directory).
func RepoRoot(t testing.TB) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return root
}

// DepsBin returns the folder `make deps` installs tools into: $DEPS_DIR/bin when DEPS_DIR
// is set (as for hack/deps.sh), else _deps/bin in the repository.
func DepsBin(t testing.TB) string {
	t.Helper()
	bin, err := testenv.DepsBin()
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return bin
}

// Binary returns the path of tool name in DepsBin, or, when envVar is not empty and set,
// the path it names. A missing or non-executable tool fails the test: the e2e tests
// never skip for want of a tool.
func Binary(t testing.TB, name, envVar string) string {
	t.Helper()
	p, err := testenv.Tool(name, envVar)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return p
}

// Busybox returns the static busybox the images are built from (Debian's busybox-static,
// or $BUSYBOX).
func Busybox(t testing.TB) string {
	t.Helper()
	p := ociarchive.DefaultBusybox
	if v := os.Getenv("BUSYBOX"); v != "" {
		p = v
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("harness: busybox not found at %s (%v): run `make deps` (it installs busybox-static)", p, err)
	}
	return p
}

var (
	cacheOnce sync.Once
	cacheDir  string
	cacheErr  error
)

// binaryCache is a directory shared by all tests of this test binary, for what is built
// once per binary. Main removes it.
func binaryCache(t testing.TB) string {
	t.Helper()
	cacheOnce.Do(func() {
		cacheDir, cacheErr = os.MkdirTemp("", "podsnapshot-e2e-")
		if cacheErr != nil {
			cacheErr = fmt.Errorf("cache directory: %w", cacheErr)
		}
	})
	if cacheErr != nil {
		t.Fatalf("harness: %v", cacheErr)
	}
	return cacheDir
}

// Main runs the tests and then removes what the harness built once per test binary.
func Main(m *testing.M) {
	code := m.Run()
	if cacheDir != "" {
		os.RemoveAll(cacheDir)
	}
	os.Exit(code)
}
