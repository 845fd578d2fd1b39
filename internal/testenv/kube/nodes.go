package kube

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/cni"
	"github.com/podsnapshot/podsnapshot/internal/testenv/containerd"
)

// The cluster side of Options.Nodes: the bridge the nodes hang on, the scheduler, and
// starting and removing the nodes (node.go).

// NodeSubnets is the range the nodes' bridge takes its /24 from: 10.224.0.0/16, beside
// the CNI networks' 10.222.0.0/16 and the services' 10.223.0.0/24.
var NodeSubnets = &net.IPNet{IP: net.IPv4(10, 224, 0, 0).To4(), Mask: net.CIDRMask(16, 32)}

// bridgePrefix is the prefix length of the bridge's subnet, a /24 of NodeSubnets.
const bridgePrefix = 24

// apiAddress is the address the API server listens on: the bridge with nodes of their
// own (they reach the host nowhere else), 127.0.0.1 otherwise.
func (c *Cluster) apiAddress() string {
	if c.BridgeIP != nil {
		return c.BridgeIP.String()
	}
	return "127.0.0.1"
}

// makeBridge creates the nodes' bridge on a /24 of NodeSubnets that no address of the
// host is in, with the host at .1 and node i at .(11+i), and the Node values.
func (c *Cluster) makeBridge() error {
	used := map[byte]bool{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && NodeSubnets.Contains(ipn.IP) {
				used[ipn.IP.To4()[2]] = true
			}
		}
	}
	third := -1
	for _, i := range rand.Perm(254) {
		if !used[byte(i+1)] {
			third = i + 1
			break
		}
	}
	if third < 0 {
		return fmt.Errorf("no free /24 in %s for the nodes' bridge", NodeSubnets)
	}
	base := NodeSubnets.IP.To4()
	c.BridgeIP = net.IPv4(base[0], base[1], byte(third), 1).To4()
	c.Bridge = fmt.Sprintf("pskbr%d", third)
	id := filepath.Base(c.Dir)
	for i := 0; i < c.opts.Nodes; i++ {
		n := &Node{
			Name:       fmt.Sprintf("node-%d", i+1),
			IP:         net.IPv4(base[0], base[1], byte(third), byte(11+i)).To4(),
			Dir:        filepath.Join(c.Dir, fmt.Sprintf("n%d", i+1)),
			CgroupRoot: fmt.Sprintf("podsnapshot-kube-%s-n%d", id, i+1),
			Netns:      fmt.Sprintf("%s-n%d", id, i+1),
			PodCIDR:    fmt.Sprintf("10.225.%d.0/24", i+1),
			c:          c,
		}
		c.Nodes = append(c.Nodes, n)
	}
	c.NodeName, c.NodeIP = c.Nodes[0].Name, c.Nodes[0].IP
	for _, args := range [][]string{
		{"link", "add", c.Bridge, "type", "bridge"},
		{"addr", "add", fmt.Sprintf("%s/%d", c.BridgeIP, bridgePrefix), "dev", c.Bridge},
		{"link", "set", c.Bridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("bridge: ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	c.logf("kube: bridge %s at %s/%d", c.Bridge, c.BridgeIP, bridgePrefix)
	return nil
}

// vethHost is the host end of node i's veth (at most 15 bytes).
func (c *Cluster) vethHost(i int) string { return fmt.Sprintf("%sv%d", c.Bridge, i+1) }

// startScheduler runs kube-scheduler (no leader election, no serving port): the agent
// DaemonSet's and the Deployments' pods need placing. Pods wait for it by themselves, so
// nothing waits for it here.
func (c *Cluster) startScheduler() error {
	_, err := c.start("kube-scheduler", "--kubeconfig="+c.kubeconfig("kube-scheduler"),
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0")
	return err
}

// startNodes records the host's KernelSettings, then starts every node in turn and
// waits for each to be Ready.
func (c *Cluster) startNodes() error {
	if c.opts.BeforeNodes != nil {
		env, regs, err := c.opts.BeforeNodes(c.BridgeIP)
		if err != nil {
			return fmt.Errorf("before the nodes: %w", err)
		}
		c.opts.NodeEnv = append(c.opts.NodeEnv, env...)
		c.opts.Registries = append(c.opts.Registries, regs...)
	}
	settings, err := readSettings()
	if err != nil {
		return err
	}
	c.settled = settings
	for i, n := range c.Nodes {
		if err := n.start(i); err != nil {
			return err
		}
	}
	return nil
}

// start makes node i's namespaces, configures and starts its containerd, imports
// NodeImages, then starts its kubelet and kube-proxy and waits for the Node to be Ready.
func (n *Node) start(i int) error {
	c := n.c
	if err := n.makeNamespaces(c.vethHost(i)); err != nil {
		return err
	}
	if err := makeCgroupRoot(n.CgroupRoot); err != nil {
		return err
	}
	config, err := n.writeContainerdConfig()
	if err != nil {
		return err
	}
	// PATH: the node's /usr/local/bin (where the installer puts the shim and runsc) and
	// the system's (Debian's runc for the default handler, iptables for the CNI bridge
	// plugin and kube-proxy). containerd finds its runc shim beside its own binary.
	env := append([]string{"PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}, c.opts.NodeEnv...)
	if err := n.superviseContainerd(filepath.Join(c.bin, "containerd"), config, env); err != nil {
		return err
	}
	if err := n.waitContainerd(c.opts.StartTimeout); err != nil {
		return err
	}
	for _, img := range c.opts.NodeImages {
		if out, err := exec.Command(filepath.Join(c.bin, "ctr"), "--address", n.Socket(), "-n", containerd.CRINamespace,
			"images", "import", "--platform", "linux/"+runtime.GOARCH, img).CombinedOutput(); err != nil {
			return fmt.Errorf("node %s: import %s: %v: %s", n.Name, img, err, out)
		}
	}
	return n.startKubelet()
}

// waitContainerd waits until the node's containerd answers `ctr version`.
func (n *Node) waitContainerd(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := exec.CommandContext(ctx, filepath.Join(n.c.bin, "ctr"), "--address", n.Socket(), "version").Run()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			n.mu.Lock()
			d := n.containerd
			n.mu.Unlock()
			return fmt.Errorf("node %s: containerd not answering after %v: %v; %s", n.Name, timeout, err, d.tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// writeContainerdConfig writes the node's /etc/containerd/config.toml as a node's own
// would be before podsnapshot: containerd's CRI with its default runtime (runc), the
// CNI bridge plugin (pods on a bridge of the node's, masqueraded to reach the API
// server and the host), the registries of Options.Registries, the pinned sandbox image,
// and an imports line for /etc/containerd/conf.d, where the installer puts its drop-in.
// It returns the config's path as the host sees it.
func (n *Node) writeContainerdConfig() (string, error) {
	c := n.c
	cniBin, err := cni.BinDir()
	if err != nil {
		return "", err
	}
	etc := n.NodeDir("/etc/containerd")
	cniConf := filepath.Join(n.Dir, "cni-conf")
	if err := os.MkdirAll(cniConf, 0o755); err != nil {
		return "", err
	}
	conflist := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge", "bridge": "cni0",
  "isGateway": true, "ipMasq": true, "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]],
  "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}}]}`, n.PodCIDR, filepath.Join(n.Dir, "cni-ipam"))
	if err := os.WriteFile(filepath.Join(cniConf, "10-pods.conflist"), []byte(conflist), 0o644); err != nil {
		return "", err
	}
	for _, r := range c.opts.Registries {
		d := filepath.Join(etc, "certs.d", r)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
		hosts := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+r, "http://"+r)
		if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(hosts), 0o644); err != nil {
			return "", err
		}
	}
	config := `imports = ["/etc/containerd/conf.d/*.toml"]
` + containerd.Config(filepath.Join(n.Dir, "containerd", "root"), filepath.Join(n.Dir, "containerd", "state"),
		NodeSocket, "info", containerd.DisabledPlugins) + "\n" +
		containerd.CRIBase(cniBin, cniConf, c.opts.SandboxImage, "/etc/containerd/certs.d")
	path := filepath.Join(etc, "config.toml")
	return path, os.WriteFile(path, []byte(config), 0o644)
}

// startKubelet starts the node's kubelet (root /var/lib/kubelet inside the node, where
// the shim config's kubelet_pods_dir points by default) and kube-proxy, and waits for
// the Node to be Ready with a heartbeat after this start.
func (n *Node) startKubelet() error {
	c := n.c
	config := filepath.Join(n.Dir, "kubelet.yaml")
	yaml := kubeletConfig(kubeletSettings{
		endpoint: "unix://" + NodeSocket, cgroupRoot: "/" + n.CgroupRoot, address: n.IP.String(),
		port: 10250, healthzAddress: n.IP.String(), healthzPort: 10248, clientCA: c.pki.crt("ca"),
		podLogs: "/var/log/pods", pluginDir: filepath.Join(n.Dir, "kubelet-plugins"),
	})
	if err := os.WriteFile(config, []byte(yaml), 0o644); err != nil {
		return err
	}
	since := time.Now().Truncate(time.Second)
	d, err := n.startDaemon("kubelet", filepath.Join(c.bin, "kubelet"), nil, "--config="+config,
		"--kubeconfig="+c.kubeconfig("kubelet-"+n.Name), "--root-dir=/var/lib/kubelet",
		"--hostname-override="+n.Name, "--node-ip="+n.IP.String(), "--v=2")
	if err != nil {
		return err
	}
	healthz := fmt.Sprintf("http://%s:10248/healthz", n.IP)
	if err := c.waitFor(d, "node "+n.Name+" kubelet healthz", func() error { return httpOK(healthz) }); err != nil {
		return err
	}
	if err := c.waitFor(d, "node "+n.Name+" Ready", func() error { return c.nodeReadyNamed(n.Name, since) }); err != nil {
		return err
	}
	// kube-proxy: the `kubernetes` Service's address to the API server, for the node's
	// pods and its host-network pods. conntrack-max-per-core 0: the conntrack table size
	// is the host's, not the node's, so it is left alone.
	p, err := n.startDaemon("kube-proxy", filepath.Join(c.bin, "kube-proxy"), []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		"--kubeconfig="+c.kubeconfig("kube-proxy"), "--hostname-override="+n.Name,
		"--proxy-mode=iptables", "--conntrack-max-per-core=0", "--cluster-cidr=10.225.0.0/16",
		"--metrics-bind-address="+n.IP.String()+":10249", "--healthz-bind-address="+n.IP.String()+":10256")
	if err != nil {
		return err
	}
	return c.waitFor(p, "node "+n.Name+" kube-proxy healthz", func() error {
		return httpOK(fmt.Sprintf("http://%s:10256/healthz", n.IP))
	})
}

// closeNodes stops the nodes' kubelets, removes the kubelet's sandboxes left in each
// containerd, stops kube-proxy and containerd and removes the namespaces. Called by
// Close after the pods were deleted.
func (c *Cluster) closeNodes(stopDaemon func(name string, grace time.Duration)) []error {
	var errs []error
	for _, n := range c.Nodes {
		stopDaemon(n.Name+"/kubelet", 30*time.Second)
	}
	// Every node, also one whose start failed half-way (its namespace made, its holder
	// not yet started).
	for i, n := range c.Nodes {
		if n.ContainerdPID() != 0 {
			errs = append(errs, c.removeSandboxes(n.Socket())...)
		}
		stopDaemon(n.Name+"/kube-proxy", 10*time.Second)
		n.stopContainerd(15 * time.Second)
		errs = append(errs, n.remove(c.vethHost(i))...)
		errs = append(errs, removeCgroupRoot(n.CgroupRoot)...)
	}
	if c.Bridge != "" {
		if out, err := exec.Command("ip", "link", "del", c.Bridge).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find") {
			errs = append(errs, fmt.Errorf("remove bridge %s: %v: %s", c.Bridge, err, out))
		}
	}
	return errs
}

// nodesLeft describes what of the nodes is still on the host.
func (c *Cluster) nodesLeft() []string {
	var out []string
	for _, n := range c.Nodes {
		for _, p := range n.Processes() {
			out = append(out, "node "+n.Name+" process "+p.String())
		}
		if _, err := os.Stat("/run/netns/" + n.Netns); err == nil {
			out = append(out, "netns "+n.Netns)
		}
		if r, _ := exec.Command("ip", "route", "show", n.PodCIDR).Output(); len(strings.TrimSpace(string(r))) > 0 {
			out = append(out, "route "+strings.TrimSpace(string(r)))
		}
		for _, cg := range cgroupsLeft(n.CgroupRoot) {
			out = append(out, "cgroup "+cg)
		}
	}
	if c.Bridge != "" {
		if _, err := net.InterfaceByName(c.Bridge); err == nil {
			out = append(out, "bridge "+c.Bridge)
		}
	}
	for _, d := range c.madeDirs {
		out = append(out, "mount point "+d)
	}
	return out
}

// NodeByName returns the node called name, or nil.
func (c *Cluster) NodeByName(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}
