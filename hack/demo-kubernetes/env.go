package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv"
	"github.com/podsnapshot/podsnapshot/internal/testenv/cni"
	"github.com/podsnapshot/podsnapshot/internal/testenv/fakegcs"
	"github.com/podsnapshot/podsnapshot/internal/testenv/hostproc"
	"github.com/podsnapshot/podsnapshot/internal/testenv/kube"
	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
	"github.com/podsnapshot/podsnapshot/internal/testenv/registry"
)

// env is everything the demo runs on, all below one short directory in /tmp (unix
// socket paths are limited to 108 bytes): a Kubernetes cluster of -nodes nodes of their
// own (internal/testenv/kube: a network and a mount namespace per node, each with its
// containerd, kubelet and kube-proxy; nothing of podsnapshot on them), the test images
// on every node, and on the nodes' bridge an image registry (the target of `make push`)
// and fake-gcs-server (the guide's bucket). podsnapshot itself gets onto the nodes the
// way a user installs it: `make push`, then `kubectl apply -k` (walk.install).
type env struct {
	repo, depsBin string
	nodes         int

	dir        string // /tmp/pskd-*: everything below
	manifests  string // the YAML files the demo applies, for the transcript
	kubeconfig string // admin

	kube *kube.Cluster
	reg  *registry.Server
	gcs  *fakegcs.Server

	// Timings of the start.
	setupTook, kubeTook, installTook time.Duration
}

// bucket is the guide's bucket, made in fake-gcs-server.
const bucket = "my-bucket"

// The images every node gets, and the pod's.
var images = []string{ociarchive.BusyboxImage, ociarchive.PauseImage, ociarchive.PythonImage}

// preflight checks what the demo needs from the machine and returns the repository.
func preflight() (repo, depsBin string, err error) {
	if os.Geteuid() != 0 {
		return "", "", errors.New("must run as root: containerd, runsc, the kubelet and the network need it (try sudo make demo-kubernetes)")
	}
	if repo, err = testenv.RepoRoot(); err != nil {
		return "", "", err
	}
	if depsBin, err = testenv.DepsBin(); err != nil {
		return "", "", err
	}
	var missing []string
	need := []string{"containerd", "ctr", "runsc", "crictl", "kube-scheduler", "kube-proxy", "fake-gcs-server"}
	for _, n := range append(need, kube.Binaries...) {
		missing = appendMissing(missing, filepath.Join(depsBin, n))
	}
	if len(missing) > 0 {
		return "", "", fmt.Errorf("missing %s: run `make deps deps-kube`", strings.Join(missing, ", "))
	}
	if _, err := cni.BinDir(); err != nil {
		return "", "", err
	}
	for _, p := range []string{ociarchive.DefaultBusybox, "/usr/bin/python3"} {
		if _, err := os.Stat(p); err != nil {
			return "", "", fmt.Errorf("the test images need %s: %w (run `make deps`)", p, err)
		}
	}
	if _, err := exec.LookPath("make"); err != nil {
		return "", "", fmt.Errorf("`make push` needs make: %w", err)
	}
	return repo, depsBin, nil
}

func appendMissing(missing []string, p string) []string {
	if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return append(missing, p)
	}
	return missing
}

// start brings everything up in order. On error the caller still closes e, which undoes
// whatever start got as far as.
func (e *env) start(ctx context.Context) (err error) {
	begin := time.Now()
	if e.repo, e.depsBin, err = preflight(); err != nil {
		return err
	}
	kubectlPath = filepath.Join(e.depsBin, "kubectl")
	if e.dir, err = os.MkdirTemp("/tmp", "pskd-"); err != nil {
		return fmt.Errorf("demo directory: %w", err)
	}
	logf("demo directory %s", e.dir)
	e.manifests = filepath.Join(e.dir, "manifests")
	for _, d := range []string{e.manifests, filepath.Join(e.dir, "k"), filepath.Join(e.dir, "gcs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("demo directory: %w", err)
		}
	}
	archives, err := e.buildImages(ctx)
	if err != nil {
		return err
	}
	e.setupTook = time.Since(begin)
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}

	logf("starting Kubernetes (etcd, kube-apiserver, kube-controller-manager, kube-scheduler; %d node(s), each with containerd, kubelet, kube-proxy)", e.nodes)
	kbegin := time.Now()
	e.kube, err = kube.Start(kube.Options{Dir: filepath.Join(e.dir, "k"), Nodes: e.nodes,
		NodeImages: archives, SandboxImage: ociarchive.PauseImage, BeforeNodes: e.startStores,
		Logf: func(f string, a ...any) { logf(f, a...) }})
	if err != nil {
		return err
	}
	e.kubeTook = time.Since(kbegin)
	e.kubeconfig = e.kube.Kubeconfig
	if err := e.gcs.CreateBucket(ctx, "demo", bucket); err != nil {
		return err
	}
	return context.Cause(ctx)
}

// startStores starts, on the nodes' bridge address ip, the registry and
// fake-gcs-server, and returns the nodes' environment (the storage endpoint) and
// registries.
func (e *env) startStores(ip net.IP) (env, registries []string, err error) {
	if e.reg, err = registry.Start(ip.String()); err != nil {
		return nil, nil, err
	}
	if e.gcs, err = fakegcs.Start(context.Background(), fakegcs.Options{IP: ip.String(), Dir: filepath.Join(e.dir, "gcs")}); err != nil {
		return nil, nil, err
	}
	logf("registry on %s, fake-gcs-server on %s", e.reg.Host, e.gcs.Host)
	return []string{"STORAGE_EMULATOR_HOST=" + e.gcs.Host}, []string{e.reg.Host}, nil
}

// buildImages builds busybox, pause (first: the nodes' pinned sandbox image) and python
// (python3 with its standard library from this machine's Debian package) and returns
// their archives.
func (e *env) buildImages(ctx context.Context) ([]string, error) {
	dir := filepath.Join(e.dir, "images")
	logf("building images %s", strings.Join(images, ", "))
	built, err := ociarchive.BuildImages(ctx, e.repo, ociarchive.DefaultBusybox, dir, ociarchive.BusyboxImage, ociarchive.PauseImage)
	if err != nil {
		return nil, fmt.Errorf("build images: %w", err)
	}
	spec, err := ociarchive.PythonSpec(ociarchive.DefaultBusybox, e.repo)
	if err != nil {
		return nil, fmt.Errorf("python image: %w", err)
	}
	python := filepath.Join(dir, "python.tar")
	if _, err := ociarchive.BuildFile(python, spec); err != nil {
		return nil, fmt.Errorf("build %s: %w", spec.Name, err)
	}
	return []string{built[ociarchive.PauseImage].Archive, built[ociarchive.BusyboxImage].Archive, python}, nil
}

// report is what close did and found.
type report struct {
	steps []string // what was torn down, in order
	left  []string // what of the demo is still on the host: should be none
	errs  []error
}

func (r report) clean() bool { return len(r.left) == 0 && len(r.errs) == 0 }

func (r report) String() string {
	var b strings.Builder
	b.WriteString(strings.Join(r.steps, "; "))
	if len(r.left) == 0 {
		b.WriteString("\n  nothing left: no process (etcd, kube-*, containerd, shim, runsc, agent), namespace, mount, cgroup, kernel setting or network device of the demo")
	} else {
		b.WriteString("\n  LEFT BEHIND:")
		for _, l := range r.left {
			b.WriteString("\n    " + l)
		}
	}
	for _, err := range r.errs {
		b.WriteString("\n  cleanup error: " + err.Error())
	}
	return b.String()
}

// watched are the processes the demo must not leave behind (comm or argv[0] prefixes).
var watched = []string{"containerd", "runsc", "etcd", "kube", "podsnapshot", "fake-gcs"}

// close tears everything down, each step bounded in time and tried whatever happened
// before: the cluster (kube.Cluster.Close: pods deleted, the nodes' daemons, shims and
// namespaces gone, cgroups and sysctls put back, its own leftover check), the registry
// and fake-gcs-server, the mounts below the demo directory, the directory. Then it looks
// for anything of the demo still on the host.
func (e *env) close() report {
	var r report
	if e.kube != nil {
		start := time.Now()
		if err := e.kube.Close(); err != nil {
			r.errs = append(r.errs, err)
		}
		r.steps = append(r.steps, fmt.Sprintf("cluster closed in %.1fs", time.Since(start).Seconds()))
	}
	if e.reg != nil {
		e.reg.Close()
	}
	if e.gcs != nil {
		e.gcs.Stop(10 * time.Second)
		r.steps = append(r.steps, "registry and fake-gcs-server stopped")
	}
	if e.dir == "" {
		return r
	}
	find := func() []hostproc.Process {
		ps, _ := hostproc.FindProcesses(watched, []string{e.dir})
		return ps
	}
	if killed := hostproc.WaitThenKill(find, 5*time.Second, 2*time.Second); len(killed) > 0 {
		r.errs = append(r.errs, fmt.Errorf("killed %d process(es) left behind: %v", len(killed), killed))
	}
	unmounted := hostproc.UnmountBelow(e.dir)
	if unmounted != nil {
		r.errs = append(r.errs, unmounted)
	}
	for _, p := range find() {
		r.left = append(r.left, "process "+p.String())
	}
	mounts, err := hostproc.MountsBelow(e.dir)
	if err != nil {
		r.errs = append(r.errs, err)
	}
	for _, m := range mounts {
		r.left = append(r.left, "mount "+m)
	}
	if e.kube != nil {
		r.left = append(r.left, e.kube.Leftovers()...)
	}
	// Never remove through a mount.
	if unmounted == nil && err == nil && len(mounts) == 0 {
		if err := os.RemoveAll(e.dir); err != nil {
			r.errs = append(r.errs, err)
		} else {
			r.steps = append(r.steps, e.dir+" removed")
		}
	}
	return r
}
