package kube

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/hostproc"
)

// ControlPlaneNamespace is where deploy/kubernetes puts podsnapshot-agent's service
// accounts and the controller's Lease.
const ControlPlaneNamespace = "podsnapshot-system"

// ControlPlaneOptions say how StartControlPlane runs podsnapshot-agent.
type ControlPlaneOptions struct {
	// Binary is podsnapshot-agent (required).
	Binary string
	// ShimConfig is the node's config (policy_dir, report_dir) the agent shares with the
	// shim (required).
	ShimConfig string
	// ContainerdAddress is the CRI containerd's socket, for manual triggers (required).
	ContainerdAddress string
	// Dir holds the kubeconfigs and the logs agent.log and controller.log (required).
	Dir string
	// Env is the environment of both (e.g. with STORAGE_EMULATOR_HOST); nil means
	// os.Environ().
	Env []string
	// Metrics serves each one's /metrics on a free 127.0.0.1 port; off otherwise.
	Metrics bool
	// SyncInterval is the controller's --sync-interval; 0 leaves its default.
	SyncInterval time.Duration
	// LogLevel is --log-level of both; "" leaves the default.
	LogLevel string
}

// ControlPlane is podsnapshot-agent running as node agent and as controller on the
// host (pods cannot reach the API server here: there is no kube-proxy), each with a
// kubeconfig holding its service account's token, so that what it may do is what
// deploy/kubernetes/rbac.yaml grants. The CRDs, namespace and RBAC must be applied
// before StartControlPlane.
type ControlPlane struct {
	Agent, Controller *hostproc.Daemon
	// AgentLog and ControllerLog are their logs (appended to across restarts).
	AgentLog, ControllerLog string
	// AgentMetrics and ControllerMetrics are http://127.0.0.1:PORT/metrics; "" when
	// Metrics is off.
	AgentMetrics, ControllerMetrics string

	agentArgs []string
	env       []string
}

// StartControlPlane starts the node agent and the controller for this cluster's node.
func (c *Cluster) StartControlPlane(o ControlPlaneOptions) (*ControlPlane, error) {
	cp := &ControlPlane{env: o.Env, AgentLog: filepath.Join(o.Dir, "agent.log"), ControllerLog: filepath.Join(o.Dir, "controller.log")}
	if cp.env == nil {
		cp.env = os.Environ()
	}
	agentKC, ctrlKC := filepath.Join(o.Dir, "podsnapshot-agent.kubeconfig"), filepath.Join(o.Dir, "podsnapshot-controller.kubeconfig")
	if err := c.ServiceAccountKubeconfig(ControlPlaneNamespace, "podsnapshot-agent", agentKC); err != nil {
		return nil, err
	}
	if err := c.ServiceAccountKubeconfig(ControlPlaneNamespace, "podsnapshot-controller", ctrlKC); err != nil {
		return nil, err
	}
	agentMetrics, ctrlMetrics := "0", "0"
	if o.Metrics {
		ports, err := FreePorts(2)
		if err != nil {
			return nil, err
		}
		agentMetrics, ctrlMetrics = fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
		cp.AgentMetrics, cp.ControllerMetrics = "http://"+agentMetrics+"/metrics", "http://"+ctrlMetrics+"/metrics"
	}
	var common []string
	if o.LogLevel != "" {
		common = append(common, "--log-level", o.LogLevel)
	}
	cp.agentArgs = append([]string{o.Binary, "--role=agent", "--config", o.ShimConfig, "--node-name", c.NodeName,
		"--containerd-address", o.ContainerdAddress, "--kubeconfig", agentKC, "--metrics-bind-address", agentMetrics,
		"--health-probe-bind-address", "0", "--report-poll-interval", "200ms"}, common...)
	ctrlArgs := append([]string{o.Binary, "--role=controller", "--kubeconfig", ctrlKC,
		"--leader-election-namespace", ControlPlaneNamespace, "--local-stores",
		"--metrics-bind-address", ctrlMetrics, "--health-probe-bind-address", "0"}, common...)
	if o.SyncInterval > 0 {
		ctrlArgs = append(ctrlArgs, "--sync-interval", o.SyncInterval.String())
	}
	if err := cp.RestartAgent(); err != nil {
		return nil, err
	}
	var err error
	if cp.Controller, err = cp.start(cp.ControllerLog, ctrlArgs); err != nil {
		cp.Stop()
		return nil, err
	}
	return cp, nil
}

// RestartAgent starts the node agent again (after Agent.Kill, say), appending to its log.
func (cp *ControlPlane) RestartAgent() error {
	d, err := cp.start(cp.AgentLog, cp.agentArgs)
	if err != nil {
		return err
	}
	cp.Agent = d
	return nil
}

func (cp *ControlPlane) start(logPath string, args []string) (*hostproc.Daemon, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr, cmd.Env = f, f, cp.env
	d, err := hostproc.StartDaemon(cmd)
	if err != nil {
		return nil, fmt.Errorf("start %s %s: %w", filepath.Base(args[0]), args[1], err)
	}
	return d, nil
}

// Stop stops both (SIGTERM, SIGKILL after 10 s); the error says which had to be killed.
func (cp *ControlPlane) Stop() error {
	var errs []error
	for _, d := range []struct {
		name string
		d    *hostproc.Daemon
	}{{"agent", cp.Agent}, {"controller", cp.Controller}} {
		if d.d != nil && d.d.Stop(10*time.Second) {
			errs = append(errs, fmt.Errorf("%s ignored SIGTERM for 10s; killed", d.name))
		}
	}
	return errors.Join(errs...)
}
