// Package agent is the node side of podsnapshot under Kubernetes (podsnapshot-agent, one
// per node as a DaemonSet). It
//
//   - mirrors the cluster's PodSnapshotStorageConfigs and PodSnapshotPolicies into the
//     node's policy directory (mirror.go), so the shim never calls the API server;
//   - delivers what the shims of its node report through the spool of package report
//     (reports.go): PodSnapshot objects and their status, Events with reason
//     GKEPodSnapshotting on the pods, the PodRestored pod condition, and metrics;
//   - carries out PodSnapshotManualTriggers for pods on its node (triggers.go);
//   - writes tokens of its node's pods' service accounts for storage configs with
//     tokenSource podKSA, which the shim exchanges for storage access (tokens.go);
//   - deletes the files of its node's local-store snapshots when their PodSnapshot is
//     deleted (deletion.go).
package agent

import (
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/pkg/dialer"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	ctrl "sigs.k8s.io/controller-runtime"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/podsnapshot/podsnapshot/internal/report"
)

// Options configure the agent of one node.
type Options struct {
	// NodeName is this node's Kubernetes name (the DaemonSet passes spec.nodeName).
	NodeName string
	// PolicyDir is the shim's policy_dir: the agent writes StorageConfigFile and a
	// NamespaceFile per namespace with policies there.
	PolicyDir string
	// ReportDir is the shim's report_dir: the spool the agent drains.
	ReportDir string
	// ContainerdAddress is containerd's gRPC socket, for manual triggers.
	ContainerdAddress string
	// TokenDir is the shim's pod_identity.token_dir: where the agent writes pod tokens
	// for storage configs with tokenSource podKSA.
	TokenDir string
	// TokenAudience is the audience of those tokens ("" when the node config names no
	// workload identity provider: such pods get no token and start cold).
	TokenAudience string
	// PollInterval is how often the spool is read; 0 means 500 ms.
	PollInterval time.Duration
	// Logger; nil means logrus.StandardLogger().
	Logger logrus.FieldLogger
}

// Setup adds the agent's controllers and spool reader to mgr. The manager's cache must
// hold this node's Pods (a spec.nodeName field selector keeps it small) and the
// podsnapshot.gke.io kinds; its client must read PodSnapshots and
// PodSnapshotManualTriggers from the API server, not the cache (status updates retry on
// conflicts and must see the latest version). It fails on a missing option.
func Setup(mgr ctrl.Manager, opts Options) error {
	switch {
	case opts.NodeName == "":
		return fmt.Errorf("agent: no node name (set --node-name or $NODE_NAME)")
	case opts.PolicyDir == "" || opts.ReportDir == "":
		return fmt.Errorf("agent: policy_dir and report_dir must be set")
	case opts.ContainerdAddress == "":
		return fmt.Errorf("agent: no containerd address")
	case opts.TokenDir == "":
		return fmt.Errorf("agent: no token directory")
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = 500 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = logrus.StandardLogger()
	}
	log := opts.Logger.WithField("node", opts.NodeName)
	conn, err := grpc.NewClient(dialer.DialAddress(opts.ContainerdAddress),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: 10 * time.Second}))
	if err != nil {
		return fmt.Errorf("agent: containerd at %s: %w", opts.ContainerdAddress, err)
	}
	c := mgr.GetClient()
	trig := &triggers{c: c, node: opts.NodeName, policyDir: opts.PolicyDir, conn: conn, log: log, now: time.Now}
	if err := (&mirror{c: c, dir: opts.PolicyDir, node: opts.NodeName, log: log}).setup(mgr); err != nil {
		return err
	}
	if err := trig.setup(mgr); err != nil {
		return err
	}
	if err := (&podTokens{c: c, node: opts.NodeName, dir: opts.TokenDir, audience: opts.TokenAudience, log: log, now: time.Now}).setup(mgr); err != nil {
		return err
	}
	if err := (&localDeletion{c: c, node: opts.NodeName, log: log}).setup(mgr); err != nil {
		return err
	}
	return mgr.Add(&reporter{c: c, reader: mgr.GetAPIReader(), spool: report.Spool{Dir: opts.ReportDir}, node: opts.NodeName,
		interval: opts.PollInterval, now: time.Now, triggers: trig, metrics: newMetrics(crmetrics.Registry), log: log})
}
