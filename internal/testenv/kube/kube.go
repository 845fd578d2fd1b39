// Package kube runs a real Kubernetes for the end-to-end tests: etcd,
// kube-apiserver, kube-controller-manager and a kubelet (v1.34, built by
// `make deps-kube` into _deps/bin) whose container runtime is a private CRI containerd
// the caller started (internal/testenv/containerd with CRI, the podsnapshot runtime
// handler and a pinned pause image). There is no scheduler and no kube-proxy: pods name
// their node (spec.nodeName, Cluster.NodeName) and use images already in containerd
// (imagePullPolicy: Never); the RuntimeClass `podsnapshot` (handler podsnapshot) is
// applied, so `runtimeClassName: podsnapshot` runs a pod through the shim.
//
// With Options.Nodes it runs instead nodes of their own (node.go, nodes.go): each a
// network and a mount namespace with its own containerd, kubelet and kube-proxy, on a
// bridge where the API server listens, plus a kube-scheduler; podsnapshot is installed
// on them the way a user would (deploy/kubernetes and its installer), not by the harness.
//
// Like the other testenv packages it needs no testing.TB: Start returns an error that
// carries the failing daemon's log tail, and Close undoes whatever Start got as far as.
// Everything lives below Options.Dir, so a process or mount is the cluster's when it
// mentions that directory. Host-wide changes the kubelet makes (sysctls,
// /var/log/containers, cgroups) are recorded and put back by Close; one cluster runs on a
// machine at a time (LockPath).
package kube

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv"
)

// Binaries are the commands Start runs from Options.BinDir (`make deps-kube`).
var Binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kubelet", "kubectl"}

// RuntimeClass is the RuntimeClass Start applies; its handler is the CRI runtime handler
// deploy/containerd/podsnapshot-cri.toml defines (and the e2e CRI config copies).
const RuntimeClass = "podsnapshot"

// Cluster addressing. Services get virtual addresses only (no kube-proxy), so these
// ranges never reach the host's routing and need not differ between clusters.
var (
	ServiceCIDR = "10.223.0.0/24"
	serviceIP   = net.IPv4(10, 223, 0, 1) // the `kubernetes` Service: first of ServiceCIDR
)

// Options configure Start. Dir and CRIEndpoint are required.
type Options struct {
	// BinDir holds Binaries and crictl; default testenv.DepsBin() (_deps/bin).
	BinDir string
	// Dir holds the cluster's state (PKI, kubeconfigs, etcd data, kubelet root). It must
	// exist and be short (say /tmp/psk-XXXX): the kubelet puts unix sockets below
	// KubeletDir, and a socket path has at most 107 bytes. Close leaves it in place (the
	// caller removes it, after reading logs if it wants).
	Dir string
	// KubeletDir is the kubelet's --root-dir; default Dir/kubelet. Its pods/ (the
	// shim's kubelet_pods_dir) is fixed by the kubelet, so a caller that writes the shim
	// config before Start passes the same directory here.
	KubeletDir string
	// LogDir receives one log file per daemon (etcd.log, kube-apiserver.log,
	// kube-controller-manager.log, kubelet.log); default Dir/logs.
	LogDir string
	// CRIEndpoint is the CRI containerd's socket path (not a URL).
	CRIEndpoint string
	// NodeName is the Node's name; default "podsnapshot-node".
	NodeName string
	// NodeIP is the kubelet's address and the Node's InternalIP, where the API server
	// reaches it; it must not be loopback. Default DefaultNodeIP().
	NodeIP net.IP
	// CgroupRoot is the kubelet's cgroupRoot (a name directly below each hierarchy's
	// root); default "podsnapshot-kube-" plus the base name of Dir, unique per cluster.
	CgroupRoot string
	// StartTimeout bounds each readiness wait of Start; default 3 minutes (an API
	// server on a busy 2-core machine takes 10-20 s).
	StartTimeout time.Duration
	// LockWait is how long Start waits for another cluster to release LockPath;
	// default 10 minutes.
	LockWait time.Duration
	// Logf reports progress (each daemon started and ready); default: nothing.
	Logf func(format string, args ...any)

	// Nodes > 0 starts that many nodes of their own (node.go: a network and a mount
	// namespace each, with its own containerd, kubelet and kube-proxy) and a
	// kube-scheduler, instead of one kubelet on CRIEndpoint, which is then not used. The
	// API server listens on the nodes' bridge (BridgeIP) and no RuntimeClass is applied:
	// deploy/kubernetes brings them. NodeName, NodeIP and KubeletDir are ignored.
	Nodes int
	// NodeImages are OCI archives imported into every node's containerd (namespace
	// k8s.io) before its kubelet starts; the first must be the pinned sandbox image
	// (SandboxImage).
	NodeImages []string
	// SandboxImage is the name of the pause image in NodeImages.
	SandboxImage string
	// NodeEnv is added to the environment of every node's containerd, and so of the
	// shims (such as STORAGE_EMULATOR_HOST).
	NodeEnv []string
	// Registries are "HOST:PORT" of plain-HTTP registries the nodes pull from
	// (a hosts.toml each in the node's /etc/containerd/certs.d).
	Registries []string
	// BeforeNodes, when set, runs once the bridge and the control plane are up and
	// before the first node starts; what it returns is added to NodeEnv and Registries.
	// Servers the nodes use (a registry, fake-gcs-server) listen on bridgeIP, the only
	// host address a node reaches.
	BeforeNodes func(bridgeIP net.IP) (env, registries []string, err error)
}

// Cluster is a running single-node Kubernetes, started by Start.
type Cluster struct {
	Dir        string
	KubeletDir string // the kubelet's root; pods below KubeletDir/pods
	LogDir     string
	NodeName   string
	NodeIP     net.IP
	CgroupRoot string // cgroupRoot name, present below every cgroup hierarchy
	// Kubeconfig is the admin kubeconfig (O=system:masters), for kubectl and clients.
	Kubeconfig string
	// APIServerURL is https://127.0.0.1:PORT; the port stays the same across
	// StopAPIServer and StartAPIServer.
	APIServerURL string
	// Ports picked free at Start.
	EtcdPort, EtcdPeerPort, APIServerPort, KubeletPort, KubeletHealthzPort int
	// Nodes are the nodes of Options.Nodes (node.go); BridgeIP is the host's address on
	// their bridge, where the API server listens; Bridge is the bridge's name.
	Nodes    []*Node
	BridgeIP net.IP
	Bridge   string

	opts    Options
	bin     string
	pki     *pki
	lock    *os.File
	settled map[string]string // KernelSettings before the kubelet started
	madeLog bool              // Start found no ContainerLogLinks: the kubelet made it
	// madeDirs are the host directories made as the nodes' mount points (mountPoint).
	madeDirs []string

	mu      sync.Mutex
	daemons map[string]*daemon // by name: etcd, kube-apiserver, ...
	closed  bool
}

// Start starts the cluster in order, each step waiting for the previous one to be
// usable: etcd healthy; kube-apiserver /readyz; kube-controller-manager, until it made
// ServiceAccount default/default (the ServiceAccount admission plugin rejects pods
// before); the kubelet, until its Node is Ready with a heartbeat posted after its start;
// then the RuntimeClass. On failure it closes what it started and returns an error that
// names the step, with the failing daemon's log tail.
func Start(opts Options) (c *Cluster, err error) {
	if opts.Dir == "" || (opts.CRIEndpoint == "" && opts.Nodes == 0) {
		return nil, fmt.Errorf("kube: Options.Dir and Options.CRIEndpoint (or Nodes) are required")
	}
	if opts.BinDir == "" {
		if opts.BinDir, err = testenv.DepsBin(); err != nil {
			return nil, fmt.Errorf("kube: %w", err)
		}
	}
	need := append([]string{"crictl"}, Binaries...)
	if opts.Nodes > 0 {
		need = append(need, "kube-scheduler", "kube-proxy", "containerd")
	}
	for _, b := range need {
		if st, err := os.Stat(filepath.Join(opts.BinDir, b)); err != nil || st.Mode().Perm()&0o111 == 0 {
			return nil, fmt.Errorf("kube: %s not found in %s: run `make deps-kube`", b, opts.BinDir)
		}
	}
	setDefault(&opts.KubeletDir, filepath.Join(opts.Dir, "kubelet"))
	setDefault(&opts.LogDir, filepath.Join(opts.Dir, "logs"))
	setDefault(&opts.NodeName, "podsnapshot-node")
	setDefault(&opts.CgroupRoot, "podsnapshot-kube-"+filepath.Base(opts.Dir))
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 3 * time.Minute
	}
	if opts.LockWait == 0 {
		opts.LockWait = 10 * time.Minute
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.NodeIP == nil && opts.Nodes == 0 {
		if opts.NodeIP, err = DefaultNodeIP(); err != nil {
			return nil, fmt.Errorf("kube: %w", err)
		}
	}
	if opts.NodeIP != nil && opts.NodeIP.IsLoopback() {
		return nil, fmt.Errorf("kube: node IP %s is a loopback address", opts.NodeIP)
	}
	for _, d := range []string{opts.KubeletDir, opts.LogDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("kube: %w", err)
		}
	}
	c = &Cluster{
		Dir: opts.Dir, KubeletDir: opts.KubeletDir, LogDir: opts.LogDir,
		NodeName: opts.NodeName, NodeIP: opts.NodeIP, CgroupRoot: opts.CgroupRoot,
		opts: opts, bin: opts.BinDir, daemons: map[string]*daemon{},
	}
	if c.lock, err = lockHost(opts.LockWait); err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	defer func() {
		if err != nil {
			if cerr := c.Close(); cerr != nil {
				err = fmt.Errorf("%w\n(and closing what started: %v)", err, cerr)
			}
			c = nil
		}
	}()
	ports, err := FreePorts(5)
	if err != nil {
		return c, fmt.Errorf("kube: %w", err)
	}
	c.EtcdPort, c.EtcdPeerPort, c.APIServerPort, c.KubeletPort, c.KubeletHealthzPort =
		ports[0], ports[1], ports[2], ports[3], ports[4]
	apiHost := "127.0.0.1"
	steps := []func() error{c.startEtcd, c.StartAPIServer, c.startControllerManager, c.startKubelet, c.applyRuntimeClass}
	if opts.Nodes > 0 {
		if err := c.makeBridge(); err != nil {
			return c, fmt.Errorf("kube: %w", err)
		}
		apiHost = c.BridgeIP.String()
		steps = []func() error{c.startEtcd, c.StartAPIServer, c.startControllerManager, c.startScheduler, c.startNodes}
	}
	c.APIServerURL = "https://" + net.JoinHostPort(apiHost, strconv.Itoa(c.APIServerPort))
	if err := c.writeCredentials(serviceIP); err != nil {
		return c, fmt.Errorf("kube: %w", err)
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return c, fmt.Errorf("kube: %w", err)
		}
	}
	return c, nil
}

func setDefault(s *string, v string) {
	if *s == "" {
		*s = v
	}
}

func (c *Cluster) logf(format string, args ...any) { c.opts.Logf(format, args...) }

// startEtcd runs a one-member etcd on 127.0.0.1 with its data in Dir/etcd.
// --unsafe-no-fsync: a test cluster's data is thrown away, and fsyncs on a shared disk
// would slow every API write.
func (c *Cluster) startEtcd() error {
	data := filepath.Join(c.Dir, "etcd")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", c.EtcdPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", c.EtcdPeerPort)
	d, err := c.start("etcd", "--name", "e2e", "--data-dir", data,
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "e2e="+peer, "--log-level", "warn", "--unsafe-no-fsync")
	if err != nil {
		return err
	}
	return c.waitFor(d, "etcd healthy", func() error { return etcdHealthy(client) })
}

// StartAPIServer starts kube-apiserver on APIServerURL and waits for /readyz. Start
// calls it; after StopAPIServer it brings the API server back with the same etcd, port
// and credentials, so clients and the kubelet reconnect by themselves.
func (c *Cluster) StartAPIServer() error {
	c.mu.Lock()
	if d := c.daemons["kube-apiserver"]; d != nil && !d.Exited() {
		c.mu.Unlock()
		return fmt.Errorf("kube-apiserver is already running")
	}
	c.mu.Unlock()
	p := c.pki
	d, err := c.start("kube-apiserver",
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", c.EtcdPort),
		"--bind-address="+c.apiAddress(), fmt.Sprintf("--secure-port=%d", c.APIServerPort),
		"--cert-dir="+filepath.Join(c.Dir, "apiserver-certs"),
		"--tls-cert-file="+p.crt("apiserver"), "--tls-private-key-file="+p.key("apiserver"),
		"--client-ca-file="+p.crt("ca"),
		"--kubelet-client-certificate="+p.crt("apiserver-kubelet-client"),
		"--kubelet-client-key="+p.key("apiserver-kubelet-client"),
		// The kubelet's serving certificate is self-signed for the node IP, its only
		// address the API server can reach; the hostname need not resolve.
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+filepath.Join(p.dir, "sa.pub"),
		"--service-account-signing-key-file="+p.key("sa"),
		"--service-cluster-ip-range="+ServiceCIDR,
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		// As kubeadm's and GKE's API servers: node agents (podsnapshot's installer) run
		// privileged containers.
		"--allow-privileged=true",
		// On SIGTERM, drain short requests and then give open watches (the kubelet's,
		// the controller manager's) 2 s rather than --request-timeout's 60 s: a stop
		// takes about 3 s instead of a minute (StopAPIServer).
		"--shutdown-send-retry-after=true")
	if err != nil {
		return err
	}
	return c.waitFor(d, "kube-apiserver ready (/readyz)", func() error {
		_, err := c.get("/readyz")
		return err
	})
}

// StopAPIServer stops kube-apiserver (SIGTERM, SIGKILL after 30 s) and waits until it
// is gone; etcd, the controller manager and the kubelet keep running and retry. It
// returns an error only when the API server was not running.
func (c *Cluster) StopAPIServer() error {
	c.mu.Lock()
	d := c.daemons["kube-apiserver"]
	c.mu.Unlock()
	if d == nil || d.Exited() {
		return fmt.Errorf("kube-apiserver is not running")
	}
	start := time.Now()
	killed := d.Stop(30 * time.Second)
	c.logf("kube: stopped kube-apiserver in %.1fs (killed: %v)", time.Since(start).Seconds(), killed)
	return nil
}

// startControllerManager runs kube-controller-manager without leader election and
// without its serving port, and waits for ServiceAccount default/default. Its
// controllers make the default ServiceAccount of each namespace and the ConfigMap
// kube-root-ca.crt (the pods' token volume needs both); with
// --use-service-account-credentials each controller uses its own account's token.
func (c *Cluster) startControllerManager() error {
	d, err := c.start("kube-controller-manager",
		"--kubeconfig="+c.kubeconfig("kube-controller-manager"), "--leader-elect=false",
		"--bind-address=127.0.0.1", "--secure-port=0",
		"--cert-dir="+filepath.Join(c.Dir, "kcm-certs"),
		"--service-account-private-key-file="+c.pki.key("sa"), "--root-ca-file="+c.pki.crt("ca"),
		"--use-service-account-credentials=true",
		"--flex-volume-plugin-dir="+filepath.Join(c.Dir, "kcm-flexvolume"))
	if err != nil {
		return err
	}
	return c.waitFor(d, "serviceaccount default/default", func() error {
		_, err := c.get("/api/v1/namespaces/default/serviceaccounts/default")
		return err
	})
}
