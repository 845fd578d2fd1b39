// Command podsnapshot-agent connects podsnapshot to a Kubernetes cluster. It runs in one
// of these roles:
//
//	podsnapshot-agent --role=agent --node-name=NODE      # on every node (DaemonSet)
//	podsnapshot-agent --role=controller                  # one active replica (Deployment)
//	podsnapshot-agent --role=install --host-root=/host   # the DaemonSet's init container
//	podsnapshot-agent --role=uninstall --host-root=/host # undoes install
//	podsnapshot-agent --role=wait                        # blocks (the uninstall DaemonSet)
//
// The agent mirrors PodSnapshotPolicies and PodSnapshotStorageConfigs into the node's
// policy_dir, delivers the shims' reports (PodSnapshot objects, Events, the PodRestored
// condition), carries out manual triggers and deletes its node's local snapshots (package
// internal/agent). The controller deletes Cloud Storage snapshots with their objects,
// fails triggers of missing pods and runs retention and the storage reconcile (package
// internal/controller). Both serve Prometheus metrics and health probes. Install puts
// the shim, runsc and the CLI on the node, adds containerd's handler and labels the node;
// uninstall takes them off again (package internal/nodeinstall; flags in install.go).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"time"

	"github.com/go-logr/logr"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/internal/agent"
	"github.com/podsnapshot/podsnapshot/internal/config"
	"github.com/podsnapshot/podsnapshot/internal/controller"
	"github.com/podsnapshot/podsnapshot/internal/kubeapi"
	_ "github.com/podsnapshot/podsnapshot/storage/gcs"   // gs:// stores
	_ "github.com/podsnapshot/podsnapshot/storage/local" // file:// stores
	"github.com/podsnapshot/podsnapshot/version"
)

type flags struct {
	role, configPath, nodeName, containerd    string
	metricsAddr, probeAddr, leaseNS, logLevel string
	leaderElect, localStores, showVersion     bool
	metricsSecure                             bool
	syncInterval, failedTTL, pollInterval     time.Duration
	install                                   installFlags
}

func main() {
	var f flags
	f.register(flag.CommandLine) // controller-runtime registers --kubeconfig there too
	flag.Parse()
	if f.showVersion {
		fmt.Printf("podsnapshot-agent %s (revision %s, %s)\n", version.Version, version.Revision, runtime.Version())
		return
	}
	if err := run(ctrl.SetupSignalHandler(), f); err != nil {
		fmt.Fprintln(os.Stderr, "podsnapshot-agent:", err)
		os.Exit(1)
	}
}

// register defines the command's flags on fs, into f.
func (f *flags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.role, "role", "agent", "agent (one per node), controller (one active replica), install or uninstall (the node's files and containerd's handler), wait (block until SIGTERM)")
	fs.StringVar(&f.configPath, "config", config.DefaultPath, "the node's podsnapshot config (TOML): policy_dir and report_dir (agent)")
	fs.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (agent; default $NODE_NAME)")
	fs.StringVar(&f.containerd, "containerd-address", "/run/containerd/containerd.sock", "containerd's gRPC socket (agent: manual triggers)")
	fs.StringVar(&f.metricsAddr, "metrics-bind-address", "", "address of the Prometheus /metrics endpoint (default "+defaultAgentMetrics+" for the agent, which has the node's network; "+defaultControllerMetrics+" for the controller); 0 disables it")
	fs.BoolVar(&f.metricsSecure, "metrics-secure", false, "serve /metrics over HTTPS to callers the API server authenticates (TokenReview) and authorizes for get on the URL /metrics (SubjectAccessReview)")
	fs.StringVar(&f.probeAddr, "health-probe-bind-address", "", "address of /healthz and /readyz (default: the agent's $POD_IP port "+probePort+", where the kubelet probes it, or :"+probePort+" without $POD_IP and for the controller); 0 disables them")
	fs.BoolVar(&f.leaderElect, "leader-elect", true, "controller: elect one active replica through a Lease")
	fs.StringVar(&f.leaseNS, "leader-election-namespace", "podsnapshot-system", "controller: namespace of the Lease podsnapshot-controller")
	fs.BoolVar(&f.localStores, "local-stores", false, "controller: this process sees the nodes' local store directories (single node or shared filesystem)")
	fs.DurationVar(&f.syncInterval, "sync-interval", time.Minute, "controller: how often retention and the storage reconcile run")
	fs.DurationVar(&f.failedTTL, "failed-ttl", 24*time.Hour, "controller: how long a Failed PodSnapshot is kept")
	fs.DurationVar(&f.pollInterval, "report-poll-interval", 500*time.Millisecond, "agent: how often the report spool is read")
	fs.StringVar(&f.logLevel, "log-level", "info", "logrus level: error, warn, info, debug")
	fs.BoolVar(&f.showVersion, "version", false, "print the version and exit")
	f.install.register(fs)
}

func run(ctx context.Context, f flags) error {
	level, err := logrus.ParseLevel(f.logLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := logrus.New()
	log.SetLevel(level)
	log.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	// controller-runtime logs through logr; its warnings and errors go to stderr.
	ctrl.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))

	if f.role == "wait" {
		// The uninstall DaemonSet's main container: its init container did the work;
		// this one keeps the pod Running so that `kubectl rollout status` says when every
		// node is done.
		log.Info("podsnapshot-agent: waiting for SIGTERM")
		<-ctx.Done()
		return nil
	}
	restCfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("Kubernetes client config (--kubeconfig, $KUBECONFIG or in-cluster): %w", err)
	}
	opts := ctrl.Options{
		Scheme:                 kubeapi.NewScheme(),
		Metrics:                f.metricsOptions(),
		HealthProbeBindAddress: f.probeAddress(os.Getenv),
		// Reads of PodSnapshots and triggers go to the API server: their status is
		// updated from several places and retried on conflicts.
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&v1.PodSnapshot{}, &v1.PodSnapshotManualTrigger{}}}},
	}
	switch f.role {
	case "agent":
		cfg, err := config.Load(f.configPath)
		if err != nil {
			return err
		}
		if f.nodeName == "" {
			return fmt.Errorf("--node-name (or $NODE_NAME) is required for --role=agent")
		}
		// This node's pods only.
		opts.Cache = cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}: {Field: fields.OneTermEqualSelector("spec.nodeName", f.nodeName)},
		}}
		mgr, err := ctrl.NewManager(restCfg, opts)
		if err != nil {
			return err
		}
		if err := mgr.AddHealthzCheck("containerd", containerdCheck(f.containerd)); err != nil {
			return err
		}
		if err := agent.Setup(mgr, agent.Options{NodeName: f.nodeName, PolicyDir: cfg.PolicyDir, ReportDir: cfg.Reports(),
			TokenDir: cfg.Tokens(), TokenAudience: cfg.PodIdentity.Audience(),
			ContainerdAddress: f.containerd, PollInterval: f.pollInterval, Logger: log}); err != nil {
			return err
		}
		return serve(ctx, mgr, log, "agent of node "+f.nodeName)
	case "controller":
		opts.LeaderElection = f.leaderElect
		opts.LeaderElectionID = "podsnapshot-controller"
		opts.LeaderElectionNamespace = f.leaseNS
		opts.LeaderElectionReleaseOnCancel = true
		mgr, err := ctrl.NewManager(restCfg, opts)
		if err != nil {
			return err
		}
		if err := controller.Setup(mgr, controller.Options{SyncInterval: f.syncInterval, FailedTTL: f.failedTTL,
			LocalStores: f.localStores, Logger: log}); err != nil {
			return err
		}
		return serve(ctx, mgr, log, "controller")
	case "install", "uninstall":
		return nodeInstall(ctx, f, restCfg, log)
	}
	return fmt.Errorf("--role %q: want agent, controller, install, uninstall or wait", f.role)
}

func serve(ctx context.Context, mgr ctrl.Manager, log logrus.FieldLogger, what string) error {
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	log.Infof("podsnapshot-agent %s: %s starting", version.Version, what)
	return mgr.Start(ctx)
}
