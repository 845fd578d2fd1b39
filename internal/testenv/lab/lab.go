// Package lab sets up, on this machine, everything a pod snapshot needs and tears it all
// down again: a private containerd whose PATH holds our shim, the workloads test image, a
// shim config, a snapshot policy and a store (a local directory, or a bucket on
// fake-gcs-server). `make demo` (hack/demo) and `make bench` (hack/bench) drive it.
//
// Unlike e2e/harness it needs no testing.TB: every step returns an error, and Close
// undoes whatever Start got as far as. Everything lives under one short directory in
// /tmp (unix socket paths are limited to 108 bytes, and the shim derives longer ones from
// containerd's socket path), so a process or mount is ours exactly when it mentions that
// directory.
package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv"
	"github.com/podsnapshot/podsnapshot/internal/testenv/containerd"
	"github.com/podsnapshot/podsnapshot/internal/testenv/fakegcs"
	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
	"github.com/podsnapshot/podsnapshot/internal/testenv/shaped"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
)

// Fixed names (docs/architecture.md), defined once elsewhere, and the policy the lab
// installs.
const (
	RuntimeType = oci.RuntimeType
	ShimBinary  = testenv.ShimBinary
	CLIBinary   = testenv.CLIBinary
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
	// GCSShaped is GCS behind a shaped proxy (internal/testenv/shaped): the same
	// fake-gcs-server, reached with Cloud Storage's first-byte latency and bandwidth.
	GCSShaped Storage = "gcs-shaped"
)

// OnGCS tells whether snapshots of s live on fake-gcs-server (GCS or GCSShaped).
func (s Storage) OnGCS() bool { return s == GCS || s == GCSShaped }

// Options configure Start.
type Options struct {
	Storage Storage
	// Namespace is the containerd namespace, and so the policy's; default "demo".
	Namespace string
	// RepoRoot is the repository; default: found above the working directory.
	RepoRoot string
	// Logf reports progress; default: nothing.
	Logf func(format string, args ...any)
	// Shape shapes the GCSShaped store; nil: shaped.Defaults(). Other storages ignore it.
	Shape *shaped.Options
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
	GCSHost    string // 127.0.0.1:PORT of fake-gcs-server itself
	Image      string // the workloads image reference
	// ImageArchive is the workloads image as an OCI archive (after Start), for tools
	// that build runsc bundles from the same root filesystem (ociarchive.ExtractRootfs).
	ImageArchive string
	// StoreHost is the 127.0.0.1:PORT the shim, ctr and the CLI reach the bucket at
	// (STORAGE_EMULATOR_HOST): GCSHost, or the shaped proxy's address for GCSShaped.
	StoreHost string
	// Shape is the shaping of a GCSShaped store (zero otherwise).
	Shape shaped.Options

	logf       func(string, ...any)
	env        []string // containerd's environment, also used for ctr and the CLI
	containerd *containerd.Daemon
	gcs        *fakegcs.Server
	proxy      *shaped.Proxy // GCSShaped only
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
		if repoRoot, err = testenv.RepoRoot(); err != nil {
			return "", err
		}
	}
	deps := depsBin(repoRoot)
	need := []string{
		filepath.Join(deps, "containerd"),
		filepath.Join(deps, "ctr"),
		filepath.Join(deps, "runsc"),
		filepath.Join(repoRoot, "_out", "bin", ShimBinary),
		filepath.Join(repoRoot, "_out", "bin", CLIBinary),
	}
	if storage.OnGCS() {
		need = append(need, filepath.Join(deps, "fake-gcs-server"))
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

// depsBin is the folder `make deps` fills in the repository at repoRoot.
func depsBin(repoRoot string) string { return filepath.Join(repoRoot, "_deps", "bin") }

// Start checks the machine (Preflight), then brings the lab up: directory, store
// (fake-gcs-server and its bucket for GCS), policy, shim config, containerd, image. On
// error it undoes what it did; otherwise the caller must Close the lab.
func Start(ctx context.Context, opts Options) (_ *Lab, err error) {
	if opts.Storage != Local && !opts.Storage.OnGCS() {
		return nil, fmt.Errorf("storage %q: want %q, %q or %q", opts.Storage, Local, GCS, GCSShaped)
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
		DepsBin:    depsBin(repo),
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
	if opts.Storage == GCSShaped {
		l.Shape = shaped.Defaults()
		if opts.Shape != nil {
			l.Shape = *opts.Shape
		}
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
	l.env = append(WithoutVar(os.Environ(), "PATH", "STORAGE_EMULATOR_HOST"),
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
	case GCS, GCSShaped:
		if err := l.startFakeGCS(ctx); err != nil {
			return err
		}
		l.StoreHost = l.GCSHost
		if l.Storage == GCSShaped {
			// The bucket is created on the emulator directly; everything after goes
			// through the proxy, the same variable pointing at it as at the plain
			// emulator, so the two stores differ by the shaping alone.
			p, err := shaped.Start(ctx, l.GCSHost, l.Shape)
			if err != nil {
				return err
			}
			l.proxy, l.StoreHost = p, p.Addr
			l.logf("shaped store on %s in front of fake-gcs-server: %s", p.Addr, l.Shape)
		}
		l.StoreURL = "gs://" + Bucket + "/" + BucketPath
		storeSpec = "gcs:\n      bucket: " + Bucket + "\n      path: " + BucketPath
		l.env = append(l.env, "STORAGE_EMULATOR_HOST="+l.StoreHost)
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
	// The same launcher and layout as the e2e tests'; it tries a few free ports.
	gcs, err := fakegcs.Start(ctx, fakegcs.Options{Binary: filepath.Join(l.DepsBin, "fake-gcs-server"), Dir: dir})
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

// startContainerd starts the lab's containerd, without CRI (it wants a CNI network the
// lab never needs), in the lab directory.
func (l *Lab) startContainerd(ctx context.Context) error {
	d, err := containerd.Start(containerd.Options{Binary: filepath.Join(l.DepsBin, "containerd"), Dir: l.Dir, Env: l.env})
	if err != nil {
		return err
	}
	l.containerd, l.Address, l.LogPath = d, d.Address, d.LogPath
	l.log = Follow(l.LogPath)

	// Ready when the socket answers `ctr version`.
	err = d.Wait(ctx, 30*time.Second, func(ctx context.Context) error {
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

// importImage builds the workloads image (static counter, slowinit and fsinit on
// busybox, plus fsinit's /etc/fsinit files) from this checkout and imports it.
func (l *Lab) importImage(ctx context.Context) error {
	l.logf("building image %s", l.Image)
	images, err := ociarchive.BuildImages(ctx, l.Repo, ociarchive.DefaultBusybox, filepath.Join(l.Dir, "image"), l.Image)
	if err != nil {
		return fmt.Errorf("build image %s: %w", l.Image, err)
	}
	archive := images[l.Image].Archive
	// The archive names the image (io.containerd.image.name); import unpacks it into the
	// default snapshotter, so ctr run can use it at once.
	if _, err := l.Ctr(ctx, "images", "import", "--platform", "linux/amd64", archive); err != nil {
		return err
	}
	l.ImageArchive = archive
	return nil
}

// WithoutVar returns env without the variables named (NAME=...).
func WithoutVar(env []string, names ...string) []string {
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
