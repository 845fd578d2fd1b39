package ociarchive

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The test images. They are built from static binaries only, so they run anywhere.
const (
	// BusyboxImage holds busybox (static) with a symlink per applet in /bin.
	// Default command: sh.
	BusyboxImage = "podsnapshot.test/busybox:latest"
	// WorkloadsImage is BusyboxImage plus /bin/counter, /bin/slowinit and /bin/fsinit
	// from internal/testenv/workloads, and the files under /etc/fsinit that fsinit
	// changes (FsinitFiles). Default command: /bin/counter.
	WorkloadsImage = "podsnapshot.test/workloads:latest"
	// PauseImage is the sandbox image of the CRI tests (containerd's pinned "sandbox"
	// image): only /pause from internal/testenv/workloads/pause, which waits for SIGTERM.
	// Entrypoint: /pause.
	PauseImage = "podsnapshot.test/pause:latest"
)

// DefaultBusybox is where Debian's busybox-static package installs its binary.
const DefaultBusybox = "/bin/busybox"

// Workloads are the programs under internal/testenv/workloads that WorkloadsImage carries in /bin.
var Workloads = []string{"counter", "slowinit", "fsinit"}

// FsinitFiles are the files of WorkloadsImage that the fsinit workload changes on its
// first run, so a snapshot of the root file system holds changes to image files too
// (see internal/testenv/workloads/fsinit): it deletes /etc/fsinit/delete-me, overwrites
// /etc/fsinit/modify-me and replaces the directory /etc/fsinit/dir (a and b) by one
// holding only c.
func FsinitFiles() []File {
	return []File{
		{Path: "/etc/fsinit", Mode: fs.ModeDir | 0o755},
		{Path: "/etc/fsinit/delete-me", Mode: 0o644, Data: []byte("delete me\n")},
		{Path: "/etc/fsinit/modify-me", Mode: 0o644, Data: []byte("original\n")},
		{Path: "/etc/fsinit/dir", Mode: fs.ModeDir | 0o755},
		{Path: "/etc/fsinit/dir/a", Mode: 0o644, Data: []byte("a\n")},
		{Path: "/etc/fsinit/dir/b", Mode: 0o644, Data: []byte("b\n")},
	}
}

// Pause is the program under internal/testenv/workloads that PauseImage carries as /pause.
const Pause = "pause"

// DefaultEnv is the environment of both test images.
var DefaultEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// BaseFiles is the skeleton of a root filesystem: the directories runtimes mount over
// and minimal /etc/passwd and /etc/group, so user "root" resolves.
func BaseFiles() []File {
	dir := func(p string, perm fs.FileMode) File { return File{Path: p, Mode: fs.ModeDir | perm} }
	return []File{
		dir("/bin", 0o755), dir("/dev", 0o755), dir("/etc", 0o755), dir("/proc", 0o555),
		dir("/root", 0o700), dir("/run", 0o755), dir("/sys", 0o555), dir("/usr/bin", 0o755),
		dir("/var", 0o755), dir("/tmp", 0o777|fs.ModeSticky),
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{Path: "/etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnobody:x:65534:\n")},
	}
}

// BusyboxFiles returns /bin/busybox copied from the host binary busybox and one symlink
// per applet (as `busybox --list` names them) in /bin, plus /usr/bin/env. The binary must
// be static: nothing else of the host goes into the image.
func BusyboxFiles(busybox string) ([]File, error) {
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("list applets of %s: %w", busybox, err)
	}
	files := []File{{Path: "/bin/busybox", Mode: 0o755, Source: busybox}}
	for _, applet := range strings.Fields(string(out)) {
		// "[" and "[[" are fine as file names; anything with a slash is not an applet.
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		files = append(files, File{Path: "/bin/" + applet, Mode: fs.ModeSymlink, Target: "busybox"})
	}
	files = append(files, File{Path: "/usr/bin/env", Mode: fs.ModeSymlink, Target: "/bin/busybox"})
	return files, nil
}

// BusyboxSpec is the spec of BusyboxImage.
func BusyboxSpec(busybox string) (Spec, error) {
	bb, err := BusyboxFiles(busybox)
	if err != nil {
		return Spec{}, err
	}
	return Spec{
		Name:       BusyboxImage,
		Files:      append(BaseFiles(), bb...),
		Cmd:        []string{"sh"},
		Env:        DefaultEnv,
		WorkingDir: "/",
	}, nil
}

// WorkloadsSpec is the spec of WorkloadsImage; binDir holds the built workloads (see
// BuildPrograms). Beside them go FsinitFiles.
func WorkloadsSpec(busybox, binDir string) (Spec, error) {
	spec, err := BusyboxSpec(busybox)
	if err != nil {
		return Spec{}, err
	}
	spec.Name = WorkloadsImage
	for _, w := range Workloads {
		src := filepath.Join(binDir, w)
		if _, err := os.Stat(src); err != nil {
			return Spec{}, fmt.Errorf("workload %s: %w", w, err)
		}
		spec.Files = append(spec.Files, File{Path: "/bin/" + w, Mode: 0o755, Source: src})
	}
	spec.Files = append(spec.Files, FsinitFiles()...)
	spec.Cmd = []string{"/bin/counter"}
	return spec, nil
}

// PauseSpec is the spec of PauseImage; binDir holds the built pause program (see
// BuildPrograms). Nothing else of busybox or the workloads goes in: a sandbox image only
// has to hold the pod open.
func PauseSpec(binDir string) (Spec, error) {
	src := filepath.Join(binDir, Pause)
	if _, err := os.Stat(src); err != nil {
		return Spec{}, fmt.Errorf("pause program: %w", err)
	}
	return Spec{
		Name:       PauseImage,
		Files:      append(BaseFiles(), File{Path: "/" + Pause, Mode: 0o755, Source: src}),
		Entrypoint: []string{"/" + Pause},
		Env:        DefaultEnv,
		WorkingDir: "/",
	}, nil
}

// Built is a test image archive written by BuildImages.
type Built struct {
	// Name is the image reference, as ctr lists it after the import.
	Name string
	// Archive is the OCI archive to import.
	Archive string
	// Digest is the manifest digest containerd reports for the image.
	Digest string
}

// BuildImages builds the named test images (BusyboxImage, WorkloadsImage, PauseImage) of
// the repository at repoRoot into dir: the programs they carry compiled into dir/bin,
// each image written to dir/NAME.tar (busybox.tar, workloads.tar, pause.tar). It returns
// them by image name.
func BuildImages(ctx context.Context, repoRoot, busybox, dir string, names ...string) (map[string]Built, error) {
	bin := filepath.Join(dir, "bin")
	var programs []string
	for _, n := range names {
		switch n {
		case WorkloadsImage:
			programs = append(programs, Workloads...)
		case PauseImage:
			programs = append(programs, Pause)
		case BusyboxImage:
		default:
			return nil, fmt.Errorf("no test image %q (have %s, %s, %s)", n, BusyboxImage, WorkloadsImage, PauseImage)
		}
	}
	if len(programs) > 0 {
		if err := BuildPrograms(ctx, repoRoot, bin, programs...); err != nil {
			return nil, err
		}
	}
	images := map[string]Built{}
	for _, n := range names {
		var spec Spec
		var err error
		var file string
		switch n {
		case BusyboxImage:
			file = "busybox.tar"
			spec, err = BusyboxSpec(busybox)
		case WorkloadsImage:
			file = "workloads.tar"
			spec, err = WorkloadsSpec(busybox, bin)
		case PauseImage:
			file = "pause.tar"
			spec, err = PauseSpec(bin)
		}
		if err != nil {
			return nil, err
		}
		archive := filepath.Join(dir, file)
		res, err := BuildFile(archive, spec)
		if err != nil {
			return nil, fmt.Errorf("build %s: %w", spec.Name, err)
		}
		images[res.Name] = Built{Name: res.Name, Archive: archive, Digest: res.ManifestDigest}
	}
	return images, nil
}

// BuildPrograms compiles the named Go programs of internal/testenv/workloads (Workloads,
// Pause)
// of the repository at repoRoot into outDir, statically (CGO_ENABLED=0) and reproducibly
// (-trimpath, no VCS stamp), for linux, in one go build.
func BuildPrograms(ctx context.Context, repoRoot, outDir string, names ...string) error {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("build workloads: %w", err)
	}
	args := []string{"build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", outDir + string(os.PathSeparator)}
	for _, w := range names {
		args = append(args, "./internal/testenv/workloads/"+w)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}
