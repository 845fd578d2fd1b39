// Package testenv is the one test environment of the repository: what the end-to-end
// tests (e2e/harness), the demo (hack/demo) and the benchmarks (hack/bench) run on. Its
// sub-packages each do one job:
//
//   - hostproc: host processes read from /proc (leak checks), daemons that die with
//     their parent, unmounting what a run left below a directory;
//   - containerd: a private containerd (config, start, readiness, stop), and the CRI
//     config of one whose pods run under the shim;
//   - cni: a private CNI network (bridge, conflist) for a CRI containerd;
//   - fakegcs: fake-gcs-server, the GCS emulator (it knows nothing of containers, so the
//     storage tests use it too);
//   - ociarchive: the test images, built without a registry (imagebuild is its command,
//     workloads/* the programs the images carry);
//   - lab: a private containerd with the podsnapshot shim, a policy and a store, for
//     programs that report errors rather than fail a test (demo, bench).
//
// This package itself finds the repository and the tools `make deps` and `make build`
// install. Nothing here imports e2e/ or hack/, nor the shim's internals.
package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Binary names, as `make build` writes them to _out/bin.
const (
	ShimBinary = "containerd-shim-podsnapshot-v1"
	// DaemonBinary is the serving shim ShimBinary starts from its own directory.
	DaemonBinary = "podsnapshot-shimd"
	CLIBinary    = "podsnapshot"
)

// modulePath is this repository's Go module.
const modulePath = "github.com/podsnapshot/podsnapshot"

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

// RepoRoot returns the repository's root: the directory of the go.mod declaring this
// module, found by walking up from the working directory (a test runs in its package's
// directory, a `go run` in the caller's). The answer is computed once per process.
func RepoRoot() (string, error) {
	rootOnce.Do(func() { rootDir, rootErr = findRepoRoot() })
	return rootDir, rootErr
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
			return "", errors.New("not inside the podsnapshot repository (no go.mod of " + modulePath + " above the working directory)")
		}
		dir = parent
	}
}

// DepsBin returns the folder `make deps` installs tools into: $DEPS_DIR/bin when DEPS_DIR
// is set (as for hack/deps.sh), else _deps/bin in the repository.
func DepsBin() (string, error) {
	if d := os.Getenv("DEPS_DIR"); d != "" {
		return filepath.Join(d, "bin"), nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "_deps", "bin"), nil
}

// Tool returns the path of tool name in DepsBin or, when envVar is not empty and set,
// the path it names. A missing or non-executable tool is an error that says to run
// `make deps`: the tests never skip for want of a tool.
func Tool(name, envVar string) (string, error) {
	p := ""
	if envVar != "" {
		p = os.Getenv(envVar)
	}
	if p == "" {
		bin, err := DepsBin()
		if err != nil {
			return "", fmt.Errorf("%s: %w", name, err)
		}
		p = filepath.Join(bin, name)
	}
	st, err := os.Stat(p)
	if err == nil && (st.IsDir() || st.Mode().Perm()&0o111 == 0) {
		err = errors.New("not an executable file")
	}
	if err != nil {
		return "", fmt.Errorf("%s not found at %s (%w): run `make deps`", name, p, err)
	}
	return p, nil
}
