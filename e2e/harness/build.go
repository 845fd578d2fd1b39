package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
)

// Image names of the test images (see internal/testenv/ociarchive).
const (
	BusyboxImage   = ociarchive.BusyboxImage
	WorkloadsImage = ociarchive.WorkloadsImage
	// PauseImage is the sandbox image a CRI containerd pins (see CRIConfig).
	PauseImage = ociarchive.PauseImage
)

// once runs a build at most once per test binary and remembers its result, error included,
// so every test that needs it fails the same way.
type once[T any] struct {
	once sync.Once
	val  T
	err  error
}

func (o *once[T]) get(f func() (T, error)) (T, error) {
	o.once.Do(func() { o.val, o.err = f() })
	return o.val, o.err
}

var shimBuild once[string]

// BuildShim builds containerd-shim-podsnapshot-v1 and the serving shim it starts from its
// own directory, podsnapshot-shimd, from ./cmd, once per test binary, and returns the
// directory holding them, to put first on containerd's PATH (ContainerdOptions.ShimDir).
func BuildShim(t testing.TB) string {
	t.Helper()
	root, cache := RepoRoot(t), binaryCache(t)
	dir, err := shimBuild.get(func() (string, error) {
		dir := filepath.Join(cache, "shim")
		for _, b := range []string{DaemonBinary, ShimBinary} {
			if err := goBuild(root, filepath.Join(dir, b), "./cmd/"+b); err != nil {
				return "", err
			}
		}
		return dir, nil
	})
	if err != nil {
		t.Fatalf("harness: build shim: %v", err)
	}
	return dir
}

var cliBuild once[string]

// BuildCLI builds the podsnapshot operator CLI once per test binary and returns its path.
func BuildCLI(t testing.TB) string {
	t.Helper()
	root, cache := RepoRoot(t), binaryCache(t)
	path, err := cliBuild.get(func() (string, error) {
		path := filepath.Join(cache, "cli", "podsnapshot")
		return path, goBuild(root, path, "./cmd/podsnapshot")
	})
	if err != nil {
		t.Fatalf("harness: build podsnapshot: %v", err)
	}
	return path
}

// BuildTags are the build tags of `make build` (GOTAGS in the Makefile), so the tests run
// the binaries as shipped.
const BuildTags = "disable_grpc_modules"

// goBuild runs go build in the repository, with a timeout so a wedged build fails the
// test instead of hanging it.
func goBuild(root, out string, pkgs ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	args := append([]string{"build", "-tags", BuildTags, "-o", out}, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// Image is a test image archive built by the harness.
type Image = ociarchive.Built

var imagesBuild once[map[string]Image]

// Images builds the test images (BusyboxImage, WorkloadsImage and PauseImage) once per
// test binary and returns them by name. The images are reproducible: the same sources
// give the same digests in every run.
func Images(t testing.TB) map[string]Image {
	t.Helper()
	root, cache, busybox := RepoRoot(t), binaryCache(t), Busybox(t)
	images, err := imagesBuild.get(func() (map[string]Image, error) {
		return ociarchive.BuildImages(context.Background(), root, busybox, filepath.Join(cache, "images"),
			BusyboxImage, WorkloadsImage, PauseImage)
	})
	if err != nil {
		t.Fatalf("harness: build test images: %v", err)
	}
	return images
}

// Workload returns the host path of a built workload binary (counter, slowinit, fsinit,
// pause), for tests that run it outside containerd, e.g. directly under runsc.
func Workload(t testing.TB, name string) string {
	t.Helper()
	Images(t)
	p := filepath.Join(binaryCache(t), "images", "bin", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("harness: workload %s: %v", name, err)
	}
	return p
}
