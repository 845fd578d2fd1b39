package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podsnapshot/podsnapshot/internal/nodeinstall"
)

// installFlags are the flags of --role=install and --role=uninstall (package
// internal/nodeinstall). --config, --containerd-address and --node-name are shared with
// the other roles; for these two roles they are host paths too.
type installFlags struct {
	hostRoot, binDir, sourceDir, containerdConfig, dropinDir string
	restart, unit, nodeLabel                                 string
	waitTimeout                                              time.Duration
	force                                                    bool
}

// register adds the flags to fs. --source-dir defaults to this binary's directory: the
// image holds all the binaries side by side in /opt/podsnapshot/bin.
func (i *installFlags) register(fs *flag.FlagSet) {
	exeDir := ""
	if exe, err := os.Executable(); err == nil {
		exeDir = filepath.Dir(exe)
	}
	fs.StringVar(&i.hostRoot, "host-root", "/", "install: where the host's / is mounted (the DaemonSet: /host); every other path is a host path")
	fs.StringVar(&i.binDir, "bin-dir", "/usr/local/bin", "install: host directory on containerd's PATH for the shim, runsc and podsnapshot")
	fs.StringVar(&i.sourceDir, "source-dir", exeDir, "install: directory (in this container) holding the binaries to install; default: this binary's")
	fs.StringVar(&i.containerdConfig, "containerd-config", "/etc/containerd/config.toml", "install: containerd's config file; created when absent, else it must import --dropin-dir")
	fs.StringVar(&i.dropinDir, "dropin-dir", "/etc/containerd/conf.d", "install: directory of containerd config drop-ins; receives "+nodeinstall.DropinName)
	fs.StringVar(&i.restart, "restart", "signal", "install: how containerd is restarted when its config changed: signal (SIGTERM; its supervisor starts it again), systemd (--containerd-unit through the host's systemd) or none (log the command, wait)")
	fs.StringVar(&i.unit, "containerd-unit", "containerd.service", "install: containerd's systemd unit (--restart=systemd, and the command --restart=none logs)")
	fs.StringVar(&i.nodeLabel, "node-label", "podsnapshot.gke.io/ready", "install: label set to \"true\" on the node once containerd serves the handler; uninstall removes it")
	fs.DurationVar(&i.waitTimeout, "wait-timeout", 2*time.Minute, "install: how long to wait for containerd to restart and serve (uninstall: stop serving) the handler")
	fs.BoolVar(&i.force, "force", false, "uninstall: go on while podsnapshot shims run")
}

// nodeInstall runs --role=install or --role=uninstall with f's flags.
func nodeInstall(ctx context.Context, f flags, restCfg *rest.Config, log logrus.FieldLogger) error {
	opts, err := installOptions(f, log)
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("Kubernetes client: %w", err)
	}
	opts.Labeler = nodeinstall.KubeLabeler{Client: kube}
	if f.role == "uninstall" {
		_, err = nodeinstall.Uninstall(ctx, opts)
	} else {
		_, err = nodeinstall.Install(ctx, opts)
	}
	return err
}

// installOptions checks the flags and builds the options but the Labeler. Errors name
// the flag.
func installOptions(f flags, log logrus.FieldLogger) (nodeinstall.Options, error) {
	i := f.install
	for _, p := range []struct{ flag, path string }{
		{"--host-root", i.hostRoot}, {"--bin-dir", i.binDir}, {"--source-dir", i.sourceDir},
		{"--containerd-config", i.containerdConfig}, {"--dropin-dir", i.dropinDir},
		{"--config", f.configPath}, {"--containerd-address", f.containerd},
	} {
		if !filepath.IsAbs(p.path) {
			return nodeinstall.Options{}, fmt.Errorf("%s %q: want an absolute path", p.flag, p.path)
		}
	}
	if f.nodeName == "" {
		return nodeinstall.Options{}, fmt.Errorf("--node-name (or $NODE_NAME) is required for --role=%s", f.role)
	}
	if i.waitTimeout <= 0 {
		return nodeinstall.Options{}, fmt.Errorf("--wait-timeout %s: want more than 0", i.waitTimeout)
	}
	var restarter nodeinstall.Restarter
	switch i.restart {
	case "signal":
		// With hostNetwork and hostPID this pod's /proc lists the node's sockets and
		// processes, and /proc/net/unix names containerd's socket by its host path.
		restarter = nodeinstall.SignalRestarter{Socket: f.containerd, ProcRoot: "/proc", Log: log}
	case "systemd":
		restarter = nodeinstall.SystemdRestarter{Unit: i.unit, Socket: filepath.Join(i.hostRoot, "/run/systemd/private"), Log: log}
	case "none":
		restarter = nodeinstall.ManualRestarter{Unit: i.unit, Log: log}
	default:
		return nodeinstall.Options{}, fmt.Errorf("--restart %q: want signal, systemd or none", i.restart)
	}
	return nodeinstall.Options{
		HostRoot:         i.hostRoot,
		SourceDir:        i.sourceDir,
		BinDir:           i.binDir,
		ContainerdConfig: i.containerdConfig,
		DropinDir:        i.dropinDir,
		ShimConfig:       f.configPath,
		NodeName:         f.nodeName,
		NodeLabel:        i.nodeLabel,
		WaitTimeout:      i.waitTimeout,
		Force:            i.force,
		Restarter:        restarter,
		Checker:          nodeinstall.CRIChecker{Socket: filepath.Join(i.hostRoot, f.containerd)},
		Processes:        nodeinstall.ProcShims{ProcRoot: "/proc"},
		Log:              log,
	}, nil
}
