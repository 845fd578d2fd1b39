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
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Fixed names from DESIGN.md.
const (
	RuntimeType = "io.containerd.podsnapshot.v1"
	ShimBinary  = "containerd-shim-podsnapshot-v1"
	modulePath  = "github.com/podsnapshot/podsnapshot"
)

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

// RepoRoot returns the repository's root: the directory of the go.mod declaring this
// module, found by walking up from the working directory (a test runs in its package's
// directory).
func RepoRoot(t testing.TB) string {
	t.Helper()
	rootOnce.Do(func() { rootDir, rootErr = findRepoRoot() })
	if rootErr != nil {
		t.Fatalf("harness: %v", rootErr)
	}
	return rootDir
}

func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module "+modulePath+"\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod of " + modulePath + " above the working directory")
		}
		dir = parent
	}
}

// DepsBin returns the folder `make deps` installs tools into: $DEPS_DIR/bin when DEPS_DIR
// is set (as for hack/deps.sh), else _deps/bin in the repository.
func DepsBin(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("DEPS_DIR"); d != "" {
		return filepath.Join(d, "bin")
	}
	return filepath.Join(RepoRoot(t), "_deps", "bin")
}

// Binary returns the path of tool name in DepsBin, or, when envVar is not empty and set,
// the path it names. A missing or non-executable tool fails the test: the e2e tests
// never skip for want of a tool.
func Binary(t testing.TB, name, envVar string) string {
	t.Helper()
	p := filepath.Join(DepsBin(t), name)
	if envVar != "" {
		if v := os.Getenv(envVar); v != "" {
			p = v
		}
	}
	st, err := os.Stat(p)
	if err != nil || st.IsDir() || st.Mode().Perm()&0o111 == 0 {
		t.Fatalf("harness: %s not found at %s (%v): run `make deps`", name, p, err)
	}
	return p
}

// Busybox returns the static busybox the images are built from (Debian's busybox-static,
// or $BUSYBOX).
func Busybox(t testing.TB) string {
	t.Helper()
	p := "/bin/busybox"
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
