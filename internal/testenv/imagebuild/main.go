// Command imagebuild writes an OCI image archive for the tests, to be loaded with
//
//	ctr -n NAMESPACE images import --platform linux/amd64 OUT.tar
//
// Examples, from the repository root:
//
//	go run ./internal/testenv/imagebuild -o busybox.tar -preset busybox
//	go run ./internal/testenv/imagebuild -o workloads.tar -preset workloads
//	go run ./internal/testenv/imagebuild -o pause.tar -preset pause
//	go run ./internal/testenv/imagebuild -o redis.tar -preset redis
//	go run ./internal/testenv/imagebuild -o torch.tar -preset torch
//	go run ./internal/testenv/imagebuild -o x.tar -name podsnapshot.test/x:1 -preset none \
//	    -add /bin/busybox=/bin/busybox -cmd '["/bin/busybox","sh"]'
//
// Presets: "busybox" (podsnapshot.test/busybox:latest, busybox and its applets),
// "workloads" (podsnapshot.test/workloads:latest, the same plus /bin/counter,
// /bin/slowinit and /bin/fsinit compiled from internal/testenv/workloads and the files
// under /etc/fsinit that fsinit changes: delete-me, modify-me, dir/a, dir/b), "pause"
// (podsnapshot.test/pause:latest, the CRI tests' sandbox image: only /pause from
// internal/testenv/workloads/pause), "redis", "python" and "nginx"
// (podsnapshot.test/NAME:latest: busybox plus the Debian program with its shared-library
// closure and data directories, and a wrapper script from testdata/workloads that
// checkpoints the sandbox once the program is ready; the Debian packages must be
// installed), "torch" (podsnapshot.test/torch:latest: python3 with Debian's
// python3-torch and 1 GiB of generated model weights; see ociarchive.TorchSpec) and "none" (only -add files, the base directories and /etc/passwd). -name,
// -cmd, -entrypoint, -env and -workdir override the preset. The library behind it is
// ./internal/testenv/ociarchive.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/podsnapshot/podsnapshot/internal/testenv"
	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
)

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	err := run()
	for _, f := range cleanup {
		f()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "imagebuild: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		out          = flag.String("o", "", "output archive (required)")
		name         = flag.String("name", "", "image name; default: the preset's")
		preset       = flag.String("preset", "busybox", "busybox, workloads, pause, redis, python, nginx, torch or none")
		busybox      = flag.String("busybox", ociarchive.DefaultBusybox, "static busybox binary")
		entrypoint   = flag.String("entrypoint", "", "entrypoint: a JSON array, or words split at spaces")
		cmdFlag      = flag.String("cmd", "", "command: a JSON array, or words split at spaces")
		workdir      = flag.String("workdir", "", "working directory")
		uncompressed = flag.Bool("uncompressed", false, "store the layer as a plain tar, not gzip")
		adds, envs   listFlag
	)
	flag.Var(&adds, "add", "IMAGE_PATH=HOST_FILE: add a file (repeatable)")
	flag.Var(&envs, "env", "K=V: an environment variable (repeatable; replaces the preset's)")
	flag.Parse()
	if *out == "" || flag.NArg() != 0 {
		flag.Usage()
		return errors.New("-o is required and no arguments are taken")
	}

	var spec ociarchive.Spec
	var err error
	switch *preset {
	case "busybox":
		spec, err = ociarchive.BusyboxSpec(*busybox)
	case "workloads":
		spec, err = workloadsSpec(*busybox)
	case "pause":
		spec, err = pauseSpec()
	case "redis", "python", "nginx", "torch":
		var root string
		if root, err = repoRoot(); err == nil {
			spec, err = ociarchive.AppSpec(*preset, *busybox, root)
		}
	case "none":
		spec = ociarchive.Spec{Files: ociarchive.BaseFiles(), Env: ociarchive.DefaultEnv, WorkingDir: "/"}
	default:
		return fmt.Errorf("-preset %q: want busybox, workloads, pause, redis, python, nginx, torch or none", *preset)
	}
	if err != nil {
		return err
	}
	if *name != "" {
		spec.Name = *name
	}
	if spec.Name == "" {
		return errors.New("-name is required with -preset none")
	}
	for _, a := range adds {
		dst, src, ok := strings.Cut(a, "=")
		if !ok || dst == "" || src == "" {
			return fmt.Errorf("-add %q: want IMAGE_PATH=HOST_FILE", a)
		}
		spec.Files = append(spec.Files, ociarchive.File{Path: dst, Source: src})
	}
	if spec.Entrypoint, err = words(spec.Entrypoint, *entrypoint); err != nil {
		return fmt.Errorf("-entrypoint: %w", err)
	}
	if spec.Cmd, err = words(spec.Cmd, *cmdFlag); err != nil {
		return fmt.Errorf("-cmd: %w", err)
	}
	if len(envs) > 0 {
		spec.Env = envs
	}
	if *workdir != "" {
		spec.WorkingDir = *workdir
	}
	if *uncompressed { // a preset may store its layer uncompressed already (torch)
		spec.Uncompressed = true
	}

	res, err := ociarchive.BuildFile(*out, spec)
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s\n", *out, res.Name, res.ManifestDigest)
	return nil
}

// workloadsSpec compiles the workloads into a temporary directory; it must run inside
// the repository (as `go run ./internal/testenv/imagebuild` does).
func workloadsSpec(busybox string) (ociarchive.Spec, error) {
	dir, err := buildPrograms(ociarchive.Workloads...)
	if err != nil {
		return ociarchive.Spec{}, err
	}
	return ociarchive.WorkloadsSpec(busybox, dir)
}

// pauseSpec compiles the pause program into a temporary directory; it must run inside
// the repository, as workloadsSpec.
func pauseSpec() (ociarchive.Spec, error) {
	dir, err := buildPrograms(ociarchive.Pause)
	if err != nil {
		return ociarchive.Spec{}, err
	}
	return ociarchive.PauseSpec(dir)
}

// buildPrograms compiles the named programs of internal/testenv/workloads into a temporary
// directory and returns it.
func buildPrograms(names ...string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "imagebuild-")
	if err != nil {
		return "", fmt.Errorf("temporary directory: %w", err)
	}
	// The spec only names the binaries; they are read when the archive is written, which
	// happens before the process exits. Remove the directory then.
	cleanup = append(cleanup, func() { os.RemoveAll(dir) })
	if err := ociarchive.BuildPrograms(context.Background(), root, dir, names...); err != nil {
		return "", err
	}
	return dir, nil
}

// cleanup holds what main removes after run, before it exits (os.Exit skips defers).
var cleanup []func()

// repoRoot is the repository (testenv.RepoRoot); the presets that compile programs or
// read testdata need it.
func repoRoot() (string, error) {
	root, err := testenv.RepoRoot()
	if err != nil {
		return "", fmt.Errorf("-preset workloads, pause, redis, python, nginx and torch must run inside the repository: %w", err)
	}
	return root, nil
}

// words parses a JSON array or space-separated words; empty keeps def.
func words(def []string, s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return def, nil
	}
	if strings.HasPrefix(s, "[") {
		var v []string
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			return nil, fmt.Errorf("%q: %w", s, err)
		}
		return v, nil
	}
	return strings.Fields(s), nil
}
