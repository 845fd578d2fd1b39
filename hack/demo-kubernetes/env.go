package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv"
	"github.com/podsnapshot/podsnapshot/internal/testenv/cni"
	"github.com/podsnapshot/podsnapshot/internal/testenv/containerd"
	"github.com/podsnapshot/podsnapshot/internal/testenv/hostproc"
	"github.com/podsnapshot/podsnapshot/internal/testenv/kube"
	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
)

// env is everything the demo runs on, all below one short directory in /tmp (unix
// socket paths are limited to 108 bytes): a private CNI network, a CRI containerd with
// the podsnapshot runtime handler, the test images, a single-node Kubernetes on it, and
// podsnapshot-agent as node agent and as controller (host processes: pods cannot reach
// the API server here, there is no kube-proxy).
type env struct {
	repo, depsBin, outBin string

	dir        string // /tmp/pskd-*: everything below
	shimConfig string
	policyDir  string // empty at start: the agent mirrors the API's policies into it
	reportDir  string // the shims' reports, which the agent delivers
	storeDir   string // the local snapshot store of the storage config
	runscRoot  string
	manifests  string // the YAML files the demo applies, for the transcript
	kubeconfig string // admin

	net   *cni.Network
	cd    *containerd.Daemon
	cdEnv []string
	kube  *kube.Cluster
	cp    *kube.ControlPlane // podsnapshot-agent, both roles

	// Timings of the start.
	setupTook, kubeTook, controlPlaneTook time.Duration
}

// The images the demo imports, and the pod's.
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
	need := []string{"containerd", "ctr", "runsc", "crictl"}
	for _, n := range append(need, kube.Binaries...) {
		missing = appendMissing(missing, filepath.Join(depsBin, n))
	}
	for _, n := range []string{testenv.ShimBinary, "podsnapshot-agent"} {
		missing = appendMissing(missing, filepath.Join(repo, "_out", "bin", n))
	}
	if len(missing) > 0 {
		return "", "", fmt.Errorf("missing %s: run `make deps deps-kube build`", strings.Join(missing, ", "))
	}
	if _, err := cni.BinDir(); err != nil {
		return "", "", err
	}
	for _, p := range []string{ociarchive.DefaultBusybox, "/usr/bin/python3"} {
		if _, err := os.Stat(p); err != nil {
			return "", "", fmt.Errorf("the test images need %s: %w (run `make deps`)", p, err)
		}
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
	e.outBin = filepath.Join(e.repo, "_out", "bin")
	kubectlPath = filepath.Join(e.depsBin, "kubectl")
	if e.dir, err = os.MkdirTemp("/tmp", "pskd-"); err != nil {
		return fmt.Errorf("demo directory: %w", err)
	}
	logf("demo directory %s", e.dir)
	e.shimConfig = filepath.Join(e.dir, "podsnapshot.toml")
	e.policyDir = filepath.Join(e.dir, "policies")
	e.reportDir = filepath.Join(e.dir, "reports")
	e.storeDir = filepath.Join(e.dir, "store")
	e.runscRoot = filepath.Join(e.dir, "runsc")
	e.manifests = filepath.Join(e.dir, "manifests")
	for _, d := range []string{e.policyDir, e.reportDir, e.storeDir, e.runscRoot, e.manifests,
		filepath.Join(e.dir, "work"), filepath.Join(e.dir, "net"), filepath.Join(e.dir, "k")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("demo directory: %w", err)
		}
	}
	kubeDir, kubeletDir := filepath.Join(e.dir, "k"), filepath.Join(e.dir, "k", "kubelet")

	// The network first: it goes last, after containerd.
	if e.net, err = cni.New(filepath.Join(e.dir, "net")); err != nil {
		return err
	}
	logf("CNI network %s: bridge %s, pods in %s", e.net.Name, e.net.Bridge, e.net.Subnet)
	// The node's shim config: an empty policy_dir (the agent fills it from the API),
	// kubelet_pods_dir for emptyDir mount hints, and the reports for the agent.
	cfg := fmt.Sprintf(`log_level = "info"
work_dir = %q
policy_dir = %q
report_dir = %q
kubelet_pods_dir = %q

[runsc]
path = %q
root = %q
`, filepath.Join(e.dir, "work"), e.policyDir, e.reportDir, filepath.Join(kubeletDir, "pods"),
		filepath.Join(e.depsBin, "runsc"), e.runscRoot)
	if err := os.WriteFile(e.shimConfig, []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("shim config: %w", err)
	}
	archives, err := e.buildImages(ctx)
	if err != nil {
		return err
	}
	if err := e.startContainerd(ctx, archives); err != nil {
		return err
	}
	e.setupTook = time.Since(begin)

	logf("starting Kubernetes (etcd, kube-apiserver, kube-controller-manager, kubelet)")
	kbegin := time.Now()
	e.kube, err = kube.Start(kube.Options{Dir: kubeDir, KubeletDir: kubeletDir, CRIEndpoint: e.cd.Address,
		Logf: func(f string, a ...any) { logf(f, a...) }})
	if err != nil {
		return err
	}
	e.kubeTook = time.Since(kbegin)
	e.kubeconfig = e.kube.Kubeconfig
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

// buildImages builds busybox, pause and python (python3 with its standard library from
// this machine's Debian package) and returns their archives.
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
	return []string{built[ociarchive.BusyboxImage].Archive, built[ociarchive.PauseImage].Archive, python}, nil
}

// startContainerd starts the CRI containerd (the podsnapshot handler, the network, the
// pinned pause image) and imports the images into namespace k8s.io, where the kubelet
// finds them.
func (e *env) startContainerd(ctx context.Context, archives []string) error {
	extra, err := containerd.CRIConfig(containerd.CRIOptions{ShimConfig: e.shimConfig,
		CNIBinDir: e.net.BinDir, CNIConfDir: e.net.ConfDir, SandboxImage: ociarchive.PauseImage})
	if err != nil {
		return err
	}
	// containerd finds runtime io.containerd.podsnapshot.v1 as the binary
	// containerd-shim-podsnapshot-v1 on its PATH; the shims inherit this environment.
	e.cdEnv = append(lab.WithoutVar(os.Environ(), "PATH"), "PATH="+e.outBin+":"+e.depsBin+":"+os.Getenv("PATH"))
	cdDir := filepath.Join(e.dir, "c")
	if err := os.MkdirAll(cdDir, 0o755); err != nil {
		return err
	}
	e.cd, err = containerd.Start(containerd.Options{Binary: filepath.Join(e.depsBin, "containerd"), Dir: cdDir,
		CRI: true, ExtraConfig: extra, Env: e.cdEnv})
	if err != nil {
		return err
	}
	err = e.cd.Wait(ctx, 30*time.Second, func(ctx context.Context) error { _, err := e.ctr(ctx, "version"); return err })
	if err != nil {
		return fmt.Errorf("%w\n%s", err, kube.LogTail(e.cd.LogPath, 4<<10))
	}
	logf("CRI containerd on %s (log %s)", e.cd.Address, e.cd.LogPath)
	for _, a := range archives {
		if _, err := e.ctr(ctx, "images", "import", "--platform", "linux/"+goruntime.GOARCH, a); err != nil {
			return err
		}
	}
	return nil
}

// ctr runs ctr against the demo's containerd in namespace k8s.io.
func (e *env) ctr(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(e.depsBin, "ctr"),
		append([]string{"--address", e.cd.Address, "--namespace", containerd.CRINamespace}, args...)...)
	cmd.Env = e.cdEnv
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// startControlPlane starts podsnapshot-agent in both roles as host processes
// (kube.ControlPlane, with their service accounts' tokens: what RBAC allows them is what
// deploy/kubernetes/rbac.yaml grants). The CRDs, namespace and RBAC are applied before
// (by the transcript).
func (e *env) startControlPlane(context.Context) error {
	cp, err := e.kube.StartControlPlane(kube.ControlPlaneOptions{Binary: filepath.Join(e.outBin, "podsnapshot-agent"),
		ShimConfig: e.shimConfig, ContainerdAddress: e.cd.Address, Dir: e.dir, SyncInterval: 10 * time.Second})
	if err != nil {
		return err
	}
	e.cp = cp
	logf("podsnapshot-agent --role=agent (pid %d, log %s) and --role=controller (pid %d, log %s) started",
		cp.Agent.Cmd.Process.Pid, cp.AgentLog, cp.Controller.Cmd.Process.Pid, cp.ControllerLog)
	return nil
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
		b.WriteString("\n  nothing left: no process (etcd, kube-*, containerd, shim, runsc, agent), mount, cgroup, kernel setting or network device of the demo")
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
var watched = []string{"containerd", "runsc", "etcd", "kube", "podsnapshot"}

// close tears everything down, each step bounded in time and tried whatever happened
// before: the agent and controller; the cluster (kube.Cluster.Close: pods deleted, the
// daemons stopped, cgroups, sysctls and log links put back, its own leftover check);
// containerd, then whatever shim or sandbox outlived it; the mounts below the demo
// directory, libcni's cached results, the network; the directory. Then it looks for
// anything of the demo still on the host.
func (e *env) close() report {
	var r report
	if e.cp != nil {
		if err := e.cp.Stop(); err != nil {
			r.errs = append(r.errs, err)
		}
		r.steps = append(r.steps, "agent stopped; controller stopped")
	}
	if e.kube != nil {
		start := time.Now()
		if err := e.kube.Close(); err != nil {
			r.errs = append(r.errs, err)
		}
		r.steps = append(r.steps, fmt.Sprintf("cluster closed in %.1fs", time.Since(start).Seconds()))
	}
	if e.cd != nil {
		if killed := e.cd.Stop(10 * time.Second); killed {
			r.errs = append(r.errs, errors.New("containerd ignored SIGTERM for 10s; killed"))
		}
		r.steps = append(r.steps, "containerd stopped")
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
	if e.cd != nil {
		if err := cni.RemoveResults(cni.ResultsDir, e.cd.Dir); err != nil {
			r.errs = append(r.errs, err)
		}
	}
	if e.net != nil {
		if err := e.net.Remove(); err != nil {
			r.errs = append(r.errs, err)
		}
		r.steps = append(r.steps, "network "+e.net.Bridge+" removed")
		r.left = append(r.left, e.net.Left()...)
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
