package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"

	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
)

// UseApp builds the image of the real program name (redis, python, nginx, torch:
// ociarchive.AppSpec) from this checkout, imports it and makes it the one Run starts
// (with the image's own command). It also gives the sandbox runsc's own loopback
// (network=none in the shim config): under ctr the container's fresh network namespace
// has its loopback down, which runsc would skip, leaving redis, nginx and the torch
// server no 127.0.0.1.
func (l *Lab) UseApp(ctx context.Context, name string) error {
	spec, err := ociarchive.AppSpec(name, ociarchive.DefaultBusybox, l.Repo)
	if err != nil {
		return fmt.Errorf("image for %s: %w (run `make deps`)", name, err)
	}
	archive := filepath.Join(l.Dir, name+".tar")
	l.logf("building image %s", spec.Name)
	if _, err := ociarchive.BuildFile(archive, spec); err != nil {
		return fmt.Errorf("build image %s: %w", spec.Name, err)
	}
	if _, err := l.Ctr(ctx, "images", "import", "--platform", "linux/"+goruntime.GOARCH, archive); err != nil {
		return err
	}
	l.Image, l.ImageArchive = spec.Name, archive
	f, err := os.OpenFile(l.ShimConfig, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("shim config: %w", err)
	}
	_, err = f.WriteString("\n[runsc.flags]\nnetwork = \"none\"\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
