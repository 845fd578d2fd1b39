// Package lab sets up, on this machine, everything a pod snapshot needs and tears it all
// down again: a private containerd whose PATH holds our shim, the workloads test image, a
// shim config, a snapshot policy and a store (a local directory, or a bucket on
// fake-gcs-server). `make demo` (hack/demo) drives it; benchmarks can reuse it.
//
// Unlike e2e/harness it needs no testing.TB: every step returns an error, and Close
// undoes whatever Start got as far as. Everything lives under one short directory in
// /tmp (unix socket paths are limited to 108 bytes, and the shim derives longer ones from
// containerd's socket path), so a process or mount is ours exactly when it mentions that
// directory.
package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/podsnapshot/podsnapshot/hack/demo/lab/labhost"
	"github.com/podsnapshot/podsnapshot/testdata/imagebuild/ociarchive"
)

// Fixed names (DESIGN.md) and the policy the lab installs.
const (
	RuntimeType = "io.containerd.podsnapshot.v1"
	ShimBinary  = "containerd-shim-podsnapshot-v1"
	CLIBinary   = "podsnapshot"
	// AppLabel selects the lab's workload-triggered policy: `ctr run --label AppLabel`.
	AppLabel = "app=my-app"
	// PolicyName is the PodSnapshotPolicy AppLabel selects.
	PolicyName = "my-app"
	// Bucket and BucketPath hold the snapshots on fake-gcs-server.
	Bucket     = "snapshots"
	BucketPath = "pods"
)

// Storage is where snapshots go.
type Storage string

const (
	Local Storage = "local" // a directory in the lab
	GCS   Storage = "gcs"   // a bucket on a private fake-gcs-server
)

// Options configure Start.
type Options struct {
	Storage Storage
	// Namespace is the containerd namespace, and so the policy's; default "demo".
	Namespace string
	// RepoRoot is the repository; default: found above the working directory.
	RepoRoot string
	// Logf reports progress; default: nothing.
	Logf func(format string, args ...any)
}

// Lab is a private containerd with the podsnapshot shim and a snapshot store.
type Lab struct {
	Storage   Storage
	Namespace string
	Repo      string // repository root
	DepsBin   string // _deps/bin: containerd, ctr, runsc, fake-gcs-server
	OutBin    string // _out/bin: the shim and the CLI

	Dir        string // everything below lives here
	Address    string // containerd's socket
	LogPath    string // containerd's log, which carries the shim's log lines
	ShimConfig string // the shim's TOML config, passed by --runtime-config-path
	PolicyDir  string
	WorkDir    string // the shim's work dir (checkpoint images, downloads)
	RunscRoot  string
	StoreURL   string // file:///... or gs://bucket/path
	GCSHost    string // 127.0.0.1:PORT of fake-gcs-server, for STORAGE_EMULATOR_HOST
	Image      string // the workloads image reference
	// ImageArchive is the workloads image as an OCI archive (after Start), for tools
	// that build runsc bundles from the same root filesystem (ociarchive.ExtractRootfs).
	ImageArchive string

	logf       func(string, ...any)
	env        []string // containerd's environment, also used for ctr and the CLI
	containerd *labhost.Daemon
	gcs        *labhost.FakeGCS
	log        *Tail

	mu         sync.Mutex
	containers []string // created by Run and not yet removed
	tails      []*Tail
	closed     bool
}

// Preflight checks what Start needs from the machine: root (containerd, mounts, runsc),
// the tools `make deps` builds, the binaries `make build` builds and a static busybox for
// the image. It returns the repository root.
func Preflight(repoRoot string, storage Storage) (string, error) {
	if os.Geteuid() != 0 {
		return "", errors.New("must run as root: containerd, runsc and the mounts need it (try sudo make demo)")
	}
	if repoRoot == "" {
		var err error
		if repoRoot, err = FindRepoRoot(); err != nil {
			return "", err
		}
	}
	need := []string{
		filepath.Join(repoRoot, "_deps", "bin", "containerd"),
		filepath.Join(repoRoot, "_deps", "bin", "ctr"),
		filepath.Join(repoRoot, "_deps", "bin", "runsc"),
		filepath.Join(repoRoot, "_out", "bin", ShimBinary),
		filepath.Join(repoRoot, "_out", "bin", CLIBinary),
	}
	if storage == GCS {
		need = append(need, filepath.Join(repoRoot, "_deps", "bin", "fake-gcs-server"))
	}
	var missing []string
	for _, p := range need {
		if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("missing %s: run `make deps build`", strings.Join(missing, ", "))
	}
	if _, err := os.Stat(ociarchive.DefaultBusybox); err != nil {
		return "", fmt.Errorf("the test image needs a static busybox at %s: %w (run `make deps`)", ociarchive.DefaultBusybox, err)
	}
	return repoRoot, nil
}

// FindRepoRoot walks up from the working directory to the go.mod of this module.
func FindRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/podsnapshot/podsnapshot\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the podsnapshot repository (no go.mod of github.com/podsnapshot/podsnapshot above the working directory)")
		}
		dir = parent
	}
}

// Start checks the machine (Preflight), then brings the lab up: directory, store
// (fake-gcs-server and its bucket for GCS), policy, shim config, containerd, image. On
// error it undoes what it did; otherwise the caller must Close the lab.
func Start(ctx context.Context, opts Options) (_ *Lab, err error) {
	if opts.Storage != Local && opts.Storage != GCS {
		return nil, fmt.Errorf("storage %q: want %q or %q", opts.Storage, Local, GCS)
	}
	repo, err := Preflight(opts.RepoRoot, opts.Storage)
	if err != nil {
		return nil, err
	}
	if opts.Namespace == "" {
		opts.Namespace = "demo"
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	dir, err := os.MkdirTemp("/tmp", "psdemo-")
	if err != nil {
		return nil, fmt.Errorf("lab directory: %w", err)
	}
	l := &Lab{
		Storage:    opts.Storage,
		Namespace:  opts.Namespace,
		Repo:       repo,
		DepsBin:    filepath.Join(repo, "_deps", "bin"),
		OutBin:     filepath.Join(repo, "_out", "bin"),
		Dir:        dir,
		Address:    filepath.Join(dir, "containerd.sock"),
		LogPath:    filepath.Join(dir, "containerd.log"),
		ShimConfig: filepath.Join(dir, "podsnapshot.toml"),
		PolicyDir:  filepath.Join(dir, "policies"),
		WorkDir:    filepath.Join(dir, "work"),
		RunscRoot:  filepath.Join(dir, "runsc"),
		Image:      ociarchive.WorkloadsImage,
		logf:       opts.Logf,
	}
	defer func() {
		if err != nil {
			if rep := l.Close(); !rep.Clean() {
				l.logf("cleanup after the failed start: %s", rep)
			}
		}
	}()
	l.logf("lab directory %s", dir)
	for _, d := range []string{l.PolicyDir, l.WorkDir, l.RunscRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("lab directory: %w", err)
		}
	}
	// containerd finds runtime io.containerd.podsnapshot.v1 as the binary
	// containerd-shim-podsnapshot-v1 on its PATH, so no runtime needs configuring; the
	// shim inherits containerd's environment, STORAGE_EMULATOR_HOST included.
	l.env = append(withoutVar(os.Environ(), "PATH", "STORAGE_EMULATOR_HOST"),
		"PATH="+l.OutBin+":"+l.DepsBin+":"+os.Getenv("PATH"))

	if err := l.startStore(ctx); err != nil {
		return nil, err
	}
	if err := l.writeConfig(); err != nil {
		return nil, err
	}
	if err := l.startContainerd(ctx); err != nil {
		return nil, err
	}
	if err := l.importImage(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

// startStore prepares the snapshot store and writes its PodSnapshotStorageConfig and the
// PodSnapshotPolicy that uses it.
func (l *Lab) startStore(ctx context.Context) error {
	var storeSpec string
	switch l.Storage {
	case Local:
		path := filepath.Join(l.Dir, "store")
		l.StoreURL = "file://" + path
		storeSpec = "local:\n      path: " + path
	case GCS:
		if err := l.startFakeGCS(ctx); err != nil {
			return err
		}
		l.StoreURL = "gs://" + Bucket + "/" + BucketPath
		storeSpec = "gcs:\n      bucket: " + Bucket + "\n      path: " + BucketPath
		l.env = append(l.env, "STORAGE_EMULATOR_HOST="+l.GCSHost)
	}
	storageConfig := `apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotStorageConfig
metadata:
  name: store
spec:
  snapshotStorageConfig:
    ` + storeSpec + "\n"
	// The workload triggers its own checkpoint (writes 1 to /proc/gvisor/checkpoint when
	// ready) and keeps running afterwards.
	policy := `apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotPolicy
metadata:
  name: ` + PolicyName + `
  namespace: ` + l.Namespace + `
spec:
  storageConfigName: store
  selector:
    matchLabels:
      app: my-app
  triggerConfig:
    type: workload
    postCheckpoint: resume
`
	if err := l.WritePolicy("storage-config.yaml", storageConfig); err != nil {
		return err
	}
	return l.WritePolicy("policy.yaml", policy)
}

// WritePolicy writes a YAML manifest into the policy directory; the shim reads the
// directory at every Create, so it applies to the next container.
func (l *Lab) WritePolicy(name, yaml string) error {
	if err := os.WriteFile(filepath.Join(l.PolicyDir, name), []byte(yaml), 0o644); err != nil {
		return fmt.Errorf("write policy: %w", err)
	}
	return nil
}

func (l *Lab) writeConfig() error {
	cfg := fmt.Sprintf(`log_level = "info"
work_dir = %q
policy_dir = %q

[runsc]
path = %q
root = %q
`, l.WorkDir, l.PolicyDir, filepath.Join(l.DepsBin, "runsc"), l.RunscRoot)
	if err := os.WriteFile(l.ShimConfig, []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("write shim config: %w", err)
	}
	return nil
}

// startFakeGCS starts fake-gcs-server on a free port of 127.0.0.1 and creates the bucket.
func (l *Lab) startFakeGCS(ctx context.Context) error {
	dir := filepath.Join(l.Dir, "gcs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("fake-gcs-server directory: %w", err)
	}
	// The same server and layout as e2e/harness's; labhost tries a few free ports.
	gcs, err := labhost.StartFakeGCS(ctx, filepath.Join(l.DepsBin, "fake-gcs-server"), dir)
	if err != nil {
		return err
	}
	l.gcs, l.GCSHost = gcs, gcs.Host
	if err := gcs.CreateBucket(ctx, "demo", Bucket); err != nil {
		return err
	}
	l.logf("fake-gcs-server on %s, bucket %s", l.GCSHost, Bucket)
	return nil
}

func (l *Lab) startContainerd(ctx context.Context) error {
	// The lab never needs CRI (it wants a CNI network); the other
	// plugins labhost disables cannot work here or reach outside the lab's directory.
	disabled := append(append([]string(nil), labhost.CRIPlugins...), labhost.DisabledPlugins...)
	config := labhost.ContainerdConfig(filepath.Join(l.Dir, "root"), filepath.Join(l.Dir, "state"), l.Address, "info", disabled)
	configPath := filepath.Join(l.Dir, "containerd.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return fmt.Errorf("write containerd config: %w", err)
	}
	logFile, err := os.Create(l.LogPath)
	if err != nil {
		return fmt.Errorf("containerd log: %w", err)
	}
	defer logFile.Close() // the child has its own copy
	cmd := exec.Command(filepath.Join(l.DepsBin, "containerd"), "--config", configPath)
	cmd.Env = l.env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if l.containerd, err = labhost.StartDaemon(cmd); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	l.log = Follow(l.LogPath)

	// Ready when the socket answers `ctr version`.
	err = labhost.WaitContainerd(ctx, l.containerd, l.Address, 30*time.Second, func(ctx context.Context) error {
		_, err := l.Ctr(ctx, "version")
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("%w; its log %s ends:\n%s", err, l.LogPath, tailOf(l.LogPath, 4<<10))
	}
	l.logf("containerd on %s (log %s)", l.Address, l.LogPath)
	return nil
}

// importImage builds the workloads image (static counter and slowinit on busybox) from
// this checkout and imports it.
func (l *Lab) importImage(ctx context.Context) error {
	dir := filepath.Join(l.Dir, "image")
	bin := filepath.Join(dir, "bin")
	l.logf("building image %s", l.Image)
	if err := ociarchive.BuildWorkloads(ctx, l.Repo, bin); err != nil {
		return fmt.Errorf("build workloads: %w", err)
	}
	spec, err := ociarchive.WorkloadsSpec(ociarchive.DefaultBusybox, bin)
	if err != nil {
		return fmt.Errorf("image spec: %w", err)
	}
	archive := filepath.Join(dir, "workloads.tar")
	if _, err := ociarchive.BuildFile(archive, spec); err != nil {
		return fmt.Errorf("build image %s: %w", spec.Name, err)
	}
	// The archive names the image (io.containerd.image.name); import unpacks it into the
	// default snapshotter, so ctr run can use it at once.
	if _, err := l.Ctr(ctx, "images", "import", "--platform", "linux/amd64", archive); err != nil {
		return err
	}
	l.ImageArchive = archive
	return nil
}

// CtrTimeout bounds every ctr call, so a wedged containerd fails the run rather than
// hanging it.
var CtrTimeout = 2 * time.Minute

// Ctr runs `ctr --address SOCK --namespace NS args...` and returns its stdout; a
// non-zero exit is an error carrying stderr.
func (l *Lab) Ctr(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, CtrTimeout)
	defer cancel()
	all := append([]string{"--address", l.Address, "--namespace", l.Namespace}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(l.DepsBin, "ctr"), all...)
	cmd.Env = l.env
	// Own process group: a Ctrl-C reaches only us; we cancel ctx, which kills ctr.
	cmd.SysProcAttr = ownGroup()
	cmd.WaitDelay = 5 * time.Second // a killed ctr's children may hold its pipes
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if cause := context.Cause(ctx); cause != nil {
			err = fmt.Errorf("%w (%w)", err, cause)
		}
		return stdout.String(), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// CLI runs the podsnapshot CLI against the lab's shim config and store; stdout and
// stderr are returned together.
func (l *Lab) CLI(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, CtrTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(l.OutBin, CLIBinary), append([]string{"--config", l.ShimConfig}, args...)...)
	cmd.Env = l.env
	cmd.SysProcAttr = ownGroup()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("podsnapshot %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Task is a detached container started by Run.
type Task struct {
	ID      string
	LogPath string // the task's stdout and stderr
	// Output follows LogPath; lines carry the moment they appeared.
	Output *Tail
	// Invoked is when `ctr run` was started, Returned when it came back (Create and Start,
	// restore included, are over then).
	Invoked, Returned time.Time
}

// Run starts command (e.g. "slowinit", "-mib", "64") in a new detached container id of
// the workloads image, its output in a file that the returned Task follows. Close removes
// the container if the caller has not (Remove).
func (l *Lab) Run(ctx context.Context, id string, labels []string, command ...string) (*Task, error) {
	runtime := []string{"--runtime", RuntimeType, "--runtime-config-path", l.ShimConfig}
	for _, lb := range labels {
		runtime = append(runtime, "--label", lb)
	}
	return l.RunWith(ctx, id, runtime, command...)
}

// RunWith is Run with other `ctr run` options than our runtime and the labels: for
// instance "--runtime", "io.containerd.runc.v2", "--runc-binary", PATH.
func (l *Lab) RunWith(ctx context.Context, id string, options []string, command ...string) (*Task, error) {
	t := &Task{ID: id, LogPath: filepath.Join(l.Dir, "out-"+id+".log")}
	args := append([]string{"run", "-d", "--log-uri", "file://" + t.LogPath}, options...)
	args = append(append(args, l.Image, id), command...)
	t.Output = Follow(t.LogPath)
	l.mu.Lock()
	l.tails = append(l.tails, t.Output)
	l.containers = append(l.containers, id) // before ctr runs: a half-created one counts
	l.mu.Unlock()
	t.Invoked = time.Now()
	_, err := l.Ctr(ctx, args...)
	t.Returned = time.Now()
	if err != nil {
		return nil, err
	}
	return t, nil
}

// WaitOutput waits, like t.Output.Wait, for a line of the task's output that satisfies
// match, but gives up as soon as the task is no longer running: a workload that crashed
// fails the wait at once instead of at the timeout.
func (l *Lab) WaitOutput(ctx context.Context, t *Task, timeout time.Duration, what string, match func(string) bool) (Line, error) {
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-tick.C:
			}
			if status, err := l.TaskStatus(wctx, t.ID); err == nil && status != "RUNNING" && status != "PAUSED" {
				// Let the last lines it wrote reach the Tail before giving up.
				time.Sleep(10 * tailPoll)
				cancel(fmt.Errorf("task %s is no longer running (status %s)", t.ID, status))
				return
			}
		}
	}()
	line, err := t.Output.Wait(wctx, timeout, what, match)
	if err != nil && ctx.Err() == nil && wctx.Err() != nil {
		// The task stopped; the line may still have arrived just before.
		if l2, err2 := t.Output.Wait(ctx, 0, what, match); err2 == nil {
			return l2, nil
		}
	}
	return line, err
}

// TaskStatus returns the status `ctr task ls` shows for id (RUNNING, STOPPED, ...), or
// "absent" when there is no such task.
func (l *Lab) TaskStatus(ctx context.Context, id string) (string, error) {
	out, err := l.Ctr(ctx, "task", "ls")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			return f[2], nil
		}
	}
	return "absent", nil
}

// Remove kills container id's task, deletes it and the container, and forgets it.
func (l *Lab) Remove(ctx context.Context, id string) error {
	// `task rm` deletes a stopped task; `task rm -f` SIGKILLs a running one and waits for
	// it to exit before deleting it. A stopped task is not forced: containerd's runc shim
	// driving runsc (the bench's reference) fails the kill of a sandbox that is gone.
	_, taskErr := l.Ctr(ctx, "task", "rm", id)
	if taskErr != nil && !strings.Contains(taskErr.Error(), "not found") {
		_, taskErr = l.Ctr(ctx, "task", "rm", "-f", id)
	}
	if taskErr != nil && strings.Contains(taskErr.Error(), "not found") {
		taskErr = nil // never started, or already deleted
	}
	_, cErr := l.Ctr(ctx, "container", "rm", id)
	if cErr != nil && strings.Contains(cErr.Error(), "not found") {
		cErr = nil
	}
	if err := errors.Join(taskErr, cErr); err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	l.mu.Lock()
	for i, c := range l.containers {
		if c == id {
			l.containers = append(l.containers[:i], l.containers[i+1:]...)
			break
		}
	}
	l.mu.Unlock()
	return nil
}

// Log follows containerd's log, which carries the shim's lines.
func (l *Lab) Log() *Tail { return l.log }

// ShimLine waits for the shim's log line about container id that contains want (for
// example "podsnapshot: committed") and returns it, parsed.
func (l *Lab) ShimLine(ctx context.Context, timeout time.Duration, id, want string) (Line, LogEntry, error) {
	line, err := l.log.Wait(ctx, timeout, fmt.Sprintf("%q for container %s", want, id), func(s string) bool {
		return strings.Contains(s, want) && strings.Contains(s, " id="+id+" ")
	})
	if err != nil {
		return Line{}, LogEntry{}, err
	}
	return line, ParseLogEntry(line.Text), nil
}

// CleanupReport says what Close did beyond the orderly shutdown.
type CleanupReport struct {
	// Killed are processes of the lab that had to be SIGKILLed after containerd stopped.
	Killed []Process
	// Left are processes of the lab still running at the very end: should be none.
	Left []Process
	// Errs are steps that failed (a container not removed, a mount that stayed busy).
	Errs []error
}

// Clean tells whether nothing of the lab was left running and no step failed.
func (r CleanupReport) Clean() bool { return len(r.Left) == 0 && len(r.Errs) == 0 }

func (r CleanupReport) String() string {
	var b strings.Builder
	if len(r.Left) == 0 {
		b.WriteString("no shim, runsc, gofer, sandbox, containerd or fake-gcs-server process left")
	} else {
		fmt.Fprintf(&b, "%d process(es) LEFT RUNNING:", len(r.Left))
		for _, p := range r.Left {
			b.WriteString("\n  " + p.String())
		}
	}
	if len(r.Killed) > 0 {
		fmt.Fprintf(&b, "; %d process(es) had to be killed:", len(r.Killed))
		for _, p := range r.Killed {
			b.WriteString("\n  " + p.String())
		}
	}
	for _, e := range r.Errs {
		b.WriteString("\n  cleanup error: " + e.Error())
	}
	return b.String()
}

// Close undoes Start and Run, each step bounded in time and independent of how the run
// ended: it removes the containers still there, stops containerd, kills what of the lab
// outlived it (shims and sandboxes survive a containerd by design), stops
// fake-gcs-server, unmounts everything below the lab directory and removes it. Finally it
// scans /proc for any process of the lab. A second call returns an empty report.
func (l *Lab) Close() CleanupReport {
	var rep CleanupReport
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return rep
	}
	l.closed = true
	containers := append([]string(nil), l.containers...)
	tails := l.tails
	l.mu.Unlock()

	// A fresh context: Close also runs after Ctrl-C has cancelled the caller's.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if l.containerd != nil && !l.containerd.Exited() {
		for _, id := range containers {
			l.logf("removing container %s", id)
			if err := l.Remove(ctx, id); err != nil {
				rep.Errs = append(rep.Errs, err)
			}
		}
	}
	for _, t := range tails {
		t.Close()
	}
	if l.log != nil {
		l.log.Close()
	}
	if l.containerd != nil {
		l.logf("stopping containerd")
		l.containerd.Stop(10 * time.Second)
	}
	// Shims and sandboxes survive their containerd by design; here they are leftovers.
	// fake-gcs-server is not one: it is stopped in order just below, after anything
	// that might still talk to it.
	markers := []string{l.Dir}
	skip := map[int]bool{}
	if l.gcs != nil && !l.gcs.Exited() {
		skip[l.gcs.Cmd.Process.Pid] = true
	}
	rep.Killed = reapProcesses(markers, 5*time.Second, skip)
	if l.gcs != nil {
		l.logf("stopping fake-gcs-server")
		l.gcs.Stop(5 * time.Second)
	}
	if err := labhost.UnmountBelow(l.Dir); err != nil {
		rep.Errs = append(rep.Errs, err)
	}
	if err := os.RemoveAll(l.Dir); err != nil {
		rep.Errs = append(rep.Errs, fmt.Errorf("remove %s: %w", l.Dir, err))
	}
	left, err := FindProcesses(markers)
	if err != nil {
		rep.Errs = append(rep.Errs, err)
	}
	rep.Left = left
	return rep
}

func withoutVar(env []string, names ...string) []string {
	var out []string
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// tailOf returns at most the last n bytes of a file, for error messages.
func tailOf(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
