package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/containerd"
)

// ContainerdOptions configure StartContainerd. The zero value is a containerd with
// namespace "test", without CRI, with only _deps/bin ahead of the inherited PATH.
type ContainerdOptions struct {
	// ShimDir is put first on containerd's PATH: containerd resolves runtime type
	// io.containerd.podsnapshot.v1 to the binary containerd-shim-podsnapshot-v1 on its
	// PATH, so no runtime needs configuring. Usually BuildShim(t).
	ShimDir string
	// Namespace used by Ctr and Client; default "test".
	Namespace string
	// EnableCRI keeps containerd's CRI plugins (off by default: they want a CNI network)
	// and makes Crictl available; see CRIConfig and NewCNINetwork for what they need.
	EnableCRI bool
	// ExtraConfig is TOML appended to the generated config (version 4, containerd 2.4's); it must not
	// redefine a table the generated config defines (see config.toml in Dir).
	ExtraConfig string
	// Env holds extra environment variables for containerd, and so for the shims it
	// starts (they inherit it), e.g. STORAGE_EMULATOR_HOST.
	Env []string
	// LogLevel of containerd; default "debug" (the log is only shown on failure).
	LogLevel string
	// StartTimeout bounds the wait for containerd's socket; default 30s.
	StartTimeout time.Duration
}

// Containerd is a private containerd started by StartContainerd.
type Containerd struct {
	// Dir holds everything below; it is short (under /tmp) because unix socket paths must
	// stay under 108 bytes, and shims derive longer paths from containerd's address.
	Dir       string
	Root      string // containerd's root (content store, snapshots, metadata)
	State     string // containerd's state (bundles, sockets, FIFOs of tasks)
	Address   string // the gRPC socket
	Config    string // the generated config.toml
	LogPath   string // containerd's stdout and stderr
	Namespace string
	// Env is containerd's environment (PATH with the shim dir and _deps/bin first).
	Env []string

	ctr    string
	crictl string // with EnableCRI
	cri    bool
	d      *containerd.Daemon
}

// AttachContainerd returns a Containerd for a CRI containerd that something else started
// and stops, such as a Kubernetes node's (internal/testenv/kube.Node): ctr and crictl
// against its socket address in namespace k8s.io, its log at logPath. dir receives
// crictl's config.
func AttachContainerd(t testing.TB, dir, address, logPath string) *Containerd {
	t.Helper()
	c := &Containerd{Dir: dir, Address: address, LogPath: logPath, Namespace: CRINamespace, Env: os.Environ(),
		ctr: Binary(t, "ctr", ""), crictl: Binary(t, "crictl", ""), cri: true}
	if err := c.writeCrictlConfig(); err != nil {
		t.Fatalf("harness: %v", err)
	}
	return c
}

// StartContainerd starts a private containerd (binary from DepsBin) and waits until its
// socket answers. At cleanup it stops containerd (SIGTERM, then SIGKILL), reaps it, kills
// and records any shim or runsc process of its own left behind (LeakCheck reports them),
// unmounts what is still mounted below its directories (with CRI: the pods' network
// namespaces too), removes libcni's cached results of its pods, and removes the
// directories. When the test failed, containerd's log is written to the test log.
func StartContainerd(t testing.TB, opts ContainerdOptions) *Containerd {
	t.Helper()
	bin := Binary(t, "containerd", "")
	ctr := Binary(t, "ctr", "")
	Binary(t, "runsc", "") // the shim needs it; fail early and clearly
	crictl := ""
	if opts.EnableCRI {
		crictl = Binary(t, "crictl", "")
	}
	if opts.Namespace == "" {
		opts.Namespace = "test"
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "debug"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}

	dir, err := os.MkdirTemp("/tmp", "psn-")
	if err != nil {
		t.Fatalf("harness: containerd directory: %v", err)
	}
	path := DepsBin(t) + string(os.PathListSeparator) + os.Getenv("PATH")
	if opts.ShimDir != "" {
		path = opts.ShimDir + string(os.PathListSeparator) + path
	}
	env := append(append(withoutVar(os.Environ(), "PATH"), "PATH="+path), opts.Env...)
	addLeakMarker(t, dir)
	// Own process group: a ^C to the test run reaches the test binary, whose cleanup
	// stops containerd in order, rather than killing containerd under it.
	d, err := containerd.Start(containerd.Options{
		Binary: bin, Dir: dir, LogLevel: opts.LogLevel, CRI: opts.EnableCRI,
		ExtraConfig: opts.ExtraConfig, Env: env,
	})
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("harness: %v", err)
	}
	c := &Containerd{
		Dir:       d.Dir,
		Root:      d.Root,
		State:     d.State,
		Address:   d.Address,
		Config:    d.Config,
		LogPath:   d.LogPath,
		Namespace: opts.Namespace,
		Env:       env,
		ctr:       ctr,
		crictl:    crictl,
		cri:       opts.EnableCRI,
		d:         d,
	}
	t.Cleanup(func() { c.stop(t) })

	if opts.EnableCRI {
		if err := c.writeCrictlConfig(); err != nil {
			t.Fatalf("harness: %v", err)
		}
	}
	if err := c.waitReady(opts.StartTimeout); err != nil {
		t.Fatalf("harness: containerd did not start: %v\n%s", err, c.Logs())
	}
	return c
}

// waitReady waits until the socket accepts connections and `ctr version` answers.
func (c *Containerd) waitReady(timeout time.Duration) error {
	return c.d.Wait(context.Background(), timeout, func(ctx context.Context) error {
		res, err := c.CtrContext(ctx, "version")
		if err == nil && res.ExitCode != 0 {
			err = errors.New(res.String())
		}
		return err
	})
}

// Stop stops containerd now (SIGTERM, then SIGKILL after 10s) and reaps it. Shims keep
// running, as they do when containerd restarts. Cleanup calls it too; a second call is a
// no-op.
func (c *Containerd) Stop(t testing.TB) {
	t.Helper()
	if killed := c.d.Stop(10 * time.Second); killed {
		t.Errorf("harness: containerd did not stop within 10s of SIGTERM; killed it")
	}
}

func (c *Containerd) stop(t testing.TB) {
	c.Stop(t)
	// Shims and sandboxes outlive containerd by design; at the end of a test they are
	// leaks. Kill them so they release mounts and sockets, and record them for LeakCheck.
	if left := reapLeftovers([]string{c.Dir}, ShutdownGrace); len(left) > 0 {
		recordLeaks(t, left)
		t.Logf("harness: killed %d process(es) left behind by containerd in %s:\n%s", len(left), c.Dir, formatProcs(left))
	}
	if err := unmountBelow(c.Dir); err != nil {
		t.Errorf("harness: %v", err)
	}
	if c.cri {
		if err := removeCNIResults(c.Dir); err != nil {
			t.Errorf("harness: %v", err)
		}
	}
	if t.Failed() {
		t.Logf("harness: containerd log (%s):\n%s", c.LogPath, c.Logs())
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		t.Errorf("harness: remove %s: %v", c.Dir, err)
	}
}

// logTail bounds the log shown on failure; a debug log of a long test is large, and the
// end is where the failure is.
const logTail = 64 << 10

// Logs returns containerd's log, at most its last 64 KiB.
func (c *Containerd) Logs() string {
	b, err := os.ReadFile(c.LogPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", c.LogPath, err)
	}
	if len(b) > logTail {
		b = append([]byte("...\n"), b[len(b)-logTail:]...)
	}
	return string(b)
}

// ShutdownGrace is how long a containerd's cleanup lets its shims and sandboxes exit on
// their own before it kills them.
var ShutdownGrace = 5 * time.Second

// CtrResult is the outcome of one ctr (or crictl) command.
type CtrResult struct {
	Tool     string // "crictl" for Crictl; empty for ctr
	Args     []string
	Stdout   string
	Stderr   string
	ExitCode int // -1 when ctr was killed (timeout)
}

func (r CtrResult) String() string {
	tool := r.Tool
	if tool == "" {
		tool = "ctr"
	}
	return fmt.Sprintf("%s %s: exit %d\nstdout:\n%s\nstderr:\n%s", tool, strings.Join(r.Args, " "), r.ExitCode, r.Stdout, r.Stderr)
}

// CtrTimeout bounds each Ctr call.
var CtrTimeout = 2 * time.Minute

// CtrCommand returns the command `ctr --address SOCK -n NS args...`, with containerd's
// environment, for callers that need to wire its stdio themselves (a terminal, a
// stream). The caller starts and waits for it.
func (c *Containerd) CtrCommand(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.ctr, append([]string{"--address", c.Address, "--namespace", c.Namespace}, args...)...)
	cmd.Env = c.Env
	// A killed ctr may leave a child holding its pipes; don't wait for them forever.
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// CtrContext runs ctr with args and returns its output and exit code. The error is only
// for a ctr that could not run at all; a non-zero exit is in the result.
func (c *Containerd) CtrContext(ctx context.Context, args ...string) (CtrResult, error) {
	return runTool(c.CtrCommand(ctx, args...), "", args)
}

// runTool runs cmd (ctr or crictl with args) and returns its output and exit code; the
// error is only for a command that could not run at all.
func runTool(cmd *exec.Cmd, tool string, args []string) (CtrResult, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := CtrResult{Tool: tool, Args: args, Stdout: stdout.String(), Stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		res.ExitCode = exitErr.ExitCode() // -1 when killed by a signal
	default:
		return res, fmt.Errorf("run %s %s: %w", filepath.Base(cmd.Path), strings.Join(args, " "), err)
	}
	return res, nil
}

// Ctr runs ctr with args (at most CtrTimeout) and returns its result, whatever the exit
// code; it fails the test only if ctr could not run.
func (c *Containerd) Ctr(t testing.TB, args ...string) CtrResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CtrTimeout)
	defer cancel()
	res, err := c.CtrContext(ctx, args...)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return res
}

// MustCtr runs ctr with args and returns its stdout; a non-zero exit fails the test.
func (c *Containerd) MustCtr(t testing.TB, args ...string) string {
	t.Helper()
	res := c.Ctr(t, args...)
	if res.ExitCode != 0 {
		t.Fatalf("harness: %v", res)
	}
	return res.Stdout
}

// ImportArgs are the ctr arguments that import an archive built by internal/testenv/ociarchive:
// `ctr images import --platform linux/<arch> ARCHIVE`. The image takes its name from the
// archive's io.containerd.image.name annotation and is unpacked into the default
// snapshotter, ready for `ctr run`.
func ImportArgs(archive string) []string {
	return []string{"images", "import", "--platform", "linux/" + goarch(), archive}
}

// ImportImage builds the test images once per test binary (see Images) and imports the
// named one (BusyboxImage, WorkloadsImage or PauseImage) into this containerd.
func (c *Containerd) ImportImage(t testing.TB, name string) Image {
	t.Helper()
	img, ok := Images(t)[name]
	if !ok {
		t.Fatalf("harness: no test image %q (have %s, %s, %s)", name, BusyboxImage, WorkloadsImage, PauseImage)
	}
	c.MustCtr(t, ImportArgs(img.Archive)...)
	return img
}

// ImportImages imports all test images.
func (c *Containerd) ImportImages(t testing.TB) map[string]Image {
	t.Helper()
	images := Images(t)
	names := make([]string, 0, len(images))
	for n := range images {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c.ImportImage(t, n)
	}
	return images
}

func withoutVar(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}
