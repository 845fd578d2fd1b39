// Package nodeinstall puts podsnapshot on a Kubernetes node and takes it off again: the
// init container of the podsnapshot-agent DaemonSet (podsnapshot-agent --role=install,
// --role=uninstall) runs it with the host's root filesystem mounted at HostRoot.
//
// Install, in order, each step idempotent (a second run with nothing changed writes
// nothing and restarts nothing):
//  1. the binaries (Binaries) from SourceDir into BinDir, each only when its sha256
//     differs, through a temporary file renamed over the target: a running shim keeps
//     its old inode;
//  2. the shim config, a commented file meaning "all defaults", only when absent;
//  3. containerd's CRI handler drop-in <DropinDir>/podsnapshot-cri.toml (deploy.ContainerdCRI,
//     its ConfigPath set to ShimConfig);
//  4. containerd's config must import the drop-in. A node without a config file gets one
//     holding only `version = 3` and the import: containerd without a config file runs on
//     its built-in defaults, and a file that only imports is those same defaults plus the
//     imported drop-in, so nothing else on the node changes. An existing config is never
//     edited (other tools own it, and rewriting TOML loses its comments): one that does
//     not import the drop-in is an error saying which line to add;
//  5. containerd restarts (Restarter) when the drop-in or the config changed, or when the
//     running containerd does not serve the handler yet (an earlier run stopped before
//     restarting it); then Install waits until containerd's CRI serves the runtime handler
//     deploy.RuntimeHandler (HandlerChecker);
//  6. the node gets the label NodeLabel=true (Labeler).
//
// Uninstall undoes it and leaves the node's files as they were before Install (empty
// directories Install created stay: they cannot be told from ones that were there): it
// refuses while podsnapshot shims run (unless Force), removes the label, removes the
// drop-in and restarts containerd until the handler is gone, then removes the binaries,
// the shim config and containerd's config, each only while it is still the very content
// Install wrote.
//
// All paths in Options but SourceDir are host paths: files are read and written at
// filepath.Join(HostRoot, path), and the text written into files (the drop-in's
// ConfigPath, the config's imports) holds the host path itself.
package nodeinstall

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/podsnapshot/podsnapshot/deploy"
	"github.com/podsnapshot/podsnapshot/internal/config"
)

// Binaries are the files Install copies from SourceDir to BinDir, in this order: the
// serving shim, then the shim containerd runs (it finds it on its PATH by the runtime
// type io.containerd.podsnapshot.v1; it starts the serving shim from its own directory,
// so that one is installed first), runsc (the shim runs it from PATH by default) and the
// operator CLI.
var Binaries = []string{"podsnapshot-shimd", "containerd-shim-podsnapshot-v1", "runsc", "podsnapshot"}

// DropinName is the drop-in's file name in DropinDir.
const DropinName = "podsnapshot-cri.toml"

// Options says where things are on the node and which parts talk to the OS.
type Options struct {
	// HostRoot is where the host's "/" is seen ("/host" in the DaemonSet, "/" on the node).
	HostRoot string
	// SourceDir holds Binaries in this process's own filesystem (the image's
	// /opt/podsnapshot/bin); not a host path.
	SourceDir string
	// BinDir is the host directory on containerd's PATH that receives Binaries.
	BinDir string
	// ContainerdConfig is containerd's config file (host path).
	ContainerdConfig string
	// DropinDir receives DropinName (host path).
	DropinDir string
	// ShimConfig is the shim config (host path), the drop-in's ConfigPath.
	ShimConfig string
	// NodeName and NodeLabel: the node labelled NodeLabel=true once the handler is served.
	NodeName, NodeLabel string
	// WaitTimeout bounds the restart of containerd and the wait for the handler together.
	WaitTimeout time.Duration
	// PollInterval is how often containerd is asked while waiting; 0 means 500 ms.
	PollInterval time.Duration
	// Force makes Uninstall go on while podsnapshot shims run.
	Force bool

	// Restarter restarts containerd (SignalRestarter, SystemdRestarter,
	// ManualRestarter).
	Restarter Restarter
	// Checker asks containerd whether it serves the handler (CRIChecker).
	Checker HandlerChecker
	// Labeler labels the node (KubeLabeler).
	Labeler Labeler
	// Processes lists running shims (ProcShims); Uninstall only, unless Force.
	Processes ProcessLister
	Log       logrus.FieldLogger
}

// host returns where the host path p is seen from this process.
func (o *Options) host(p string) string { return filepath.Join(o.HostRoot, p) }

// dropin is the drop-in's host path.
func (o *Options) dropin() string { return filepath.Join(o.DropinDir, DropinName) }

// poll returns PollInterval or its default.
func (o *Options) poll() time.Duration {
	if o.PollInterval > 0 {
		return o.PollInterval
	}
	return 500 * time.Millisecond
}

// validate checks what both Install and Uninstall need; errors name the option.
func (o *Options) validate() error {
	var errs []error
	for _, p := range []struct{ name, path string }{
		{"bin dir", o.BinDir}, {"containerd config", o.ContainerdConfig},
		{"drop-in dir", o.DropinDir}, {"shim config", o.ShimConfig}, {"host root", o.HostRoot},
	} {
		if !filepath.IsAbs(p.path) {
			errs = append(errs, fmt.Errorf("%s %q: want an absolute path", p.name, p.path))
		}
	}
	if o.SourceDir == "" {
		errs = append(errs, errors.New("source dir: empty"))
	}
	if o.NodeName == "" || o.NodeLabel == "" {
		errs = append(errs, errors.New("node name and node label are required"))
	}
	if o.WaitTimeout <= 0 {
		errs = append(errs, fmt.Errorf("wait timeout %s: want more than 0", o.WaitTimeout))
	}
	if o.Restarter == nil || o.Checker == nil || o.Labeler == nil || o.Log == nil {
		errs = append(errs, errors.New("restarter, handler checker, labeler and logger are required"))
	}
	return errors.Join(errs...)
}

// Result says what Install or Uninstall did, for the summary line and for tests.
type Result struct {
	// Changed names each file written or removed, e.g. "binary runsc (updated)".
	Changed []string
	// Kept names each file Uninstall left because its content is not Install's.
	Kept []string
	// Restarted: containerd was restarted (by the Restarter itself, not left to an operator).
	Restarted bool
	// RestartAsked: a restart was needed (Restarted, or asked of the operator).
	RestartAsked bool
}

// changed records one change.
func (r *Result) changed(format string, args ...any) {
	r.Changed = append(r.Changed, fmt.Sprintf(format, args...))
}

// summary is the one-line account of r: "changed: a, b; containerd restarted".
func (r *Result) summary() string {
	changed := "nothing"
	if len(r.Changed) > 0 {
		changed = strings.Join(r.Changed, ", ")
	}
	restart := "containerd not restarted"
	switch {
	case r.Restarted:
		restart = "containerd restarted"
	case r.RestartAsked:
		restart = "containerd restarted by the operator"
	}
	s := "changed: " + changed + "; " + restart
	if len(r.Kept) > 0 {
		s += "; kept: " + strings.Join(r.Kept, ", ")
	}
	return s
}

// shimConfigText is the shim config Install writes when there is none: every key at its
// default. Uninstall removes the file only while it is still exactly this text.
var shimConfigText = []byte(`# podsnapshot shim config, written by podsnapshot-agent --role=install because the
# node had none. No key is set: every key has its default (README.md, "Shim
# configuration"). Install never overwrites this file; uninstall removes it only while
# it is unchanged.
`)

// containerdConfigText is containerd's config Install creates on a node without one,
// importing every *.toml of dropinDir. Uninstall removes it only while it is still
// exactly this text.
func containerdConfigText(dropinDir string) []byte {
	return fmt.Appendf(nil, `# containerd config written by podsnapshot-agent --role=install because this node had
# none. containerd without a config file runs on its built-in defaults; this file is
# those same defaults plus the files imported below, which hold the podsnapshot
# runtime handler. Uninstall removes this file only while it is unchanged.
version = 3
imports = [%q]
`, filepath.Join(dropinDir, "*.toml"))
}

// dropinText is deploy.ContainerdCRI with its ConfigPath set to shimConfig (the shipped
// file names config.DefaultPath), checked with deploy.ParseCRI.
func dropinText(shimConfig string) ([]byte, error) {
	text := deploy.ContainerdCRI
	if shimConfig != config.DefaultPath {
		// A TOML literal string (single quotes), like the shipped value: no escapes.
		if strings.ContainsAny(shimConfig, "'\n") {
			return nil, fmt.Errorf("shim config path %q: a quote or newline cannot go into the drop-in", shimConfig)
		}
		old := "'" + config.DefaultPath + "'"
		if n := strings.Count(string(text), old); n != 1 {
			return nil, fmt.Errorf("deploy/containerd/%s: %d occurrences of %s, want 1", DropinName, n, old)
		}
		text = []byte(strings.Replace(string(text), old, "'"+shimConfig+"'", 1))
	}
	f, err := deploy.ParseCRI(text)
	if err != nil {
		return nil, err
	}
	if got := f.Plugins.Runtime.Containerd.Runtimes[deploy.RuntimeHandler].Options.ConfigPath; got != shimConfig {
		return nil, fmt.Errorf("drop-in: ConfigPath is %q, want %q", got, shimConfig)
	}
	return text, nil
}
