package kube

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/hostproc"
)

// A Node of a multi-node cluster (Options.Nodes) is a machine of its own as far as
// Kubernetes and podsnapshot can tell, on this one:
//
//   - a network namespace with one address on the cluster's bridge (Node.IP), its
//     default route through the host's end (Cluster.BridgeIP);
//   - a mount namespace in which the node's own directories are bind-mounted over the
//     host paths a node's software uses: NodePaths (/etc/containerd, /usr/local/bin,
//     /var/lib/kubelet, /run, ...). The shipped DaemonSet, installer and shim config
//     then work with their default host paths, and two nodes never see each other's
//     files. Everything else (/tmp, the repository, /sys/fs/cgroup) is the host's.
//   - a containerd (CRI, default runtime runc, the CNI bridge plugin for pods) supervised
//     as systemd's Restart=always would: when it exits it is started again, so the
//     installer can restart it with a signal; a kubelet; a kube-proxy (iptables), through
//     which pods reach the API server at the `kubernetes` Service.
//
// A holder process (sleep) keeps the namespaces; the node's daemons enter them with
// nsenter. Everything of the node is below Node.Dir.

// NodePaths are the host paths each node sees as a directory of its own, below Node.Dir
// (the path with "/" made "-"). A host path that does not exist is created as an empty
// mount point and removed again by Close.
var NodePaths = []string{"/run", "/etc/containerd", "/etc/podsnapshot", "/usr/local/bin",
	"/var/lib/kubelet", "/var/lib/podsnapshot", "/var/log/containers", "/var/log/pods"}

// NodeSocket is containerd's socket inside a node, where the agent DaemonSet and the
// installer look for it by default.
const NodeSocket = "/run/containerd/containerd.sock"

// Node is one node of a multi-node cluster.
type Node struct {
	Name string
	IP   net.IP
	// Dir holds the node's directories (NodeDir), containerd's root and state, logs.
	Dir string
	// CgroupRoot is the kubelet's cgroupRoot (below every hierarchy).
	CgroupRoot string
	// Netns is the network namespace's name (ip netns).
	Netns string
	// PodCIDR is the node's pod subnet (its CNI bridge's), routed from the host through
	// the node, as a cluster network would: the host reaches pod IPs (metrics).
	PodCIDR string

	c      *Cluster
	holder *hostproc.Daemon // sleep, in the node's namespaces
	mntNS  string           // readlink of the holder's /proc/PID/ns/mnt: "mnt:[INODE]"

	mu          sync.Mutex
	containerd  *daemon // the current containerd process (mu)
	restarts    int     // containerd starts after the first (mu)
	stopping    bool    // Close stops containerd for good (mu)
	supervising chan struct{}
}

// NodeDir is the directory below Node.Dir that a node sees at hostPath.
func (n *Node) NodeDir(hostPath string) string {
	return filepath.Join(n.Dir, strings.ReplaceAll(strings.TrimPrefix(hostPath, "/"), "/", "-"))
}

// Socket is containerd's socket as the host reaches it (NodeSocket below the node's
// /run).
func (n *Node) Socket() string {
	return filepath.Join(n.NodeDir("/run"), strings.TrimPrefix(NodeSocket, "/run/"))
}

// ContainerdRestarts counts the node's containerd starts after the first.
func (n *Node) ContainerdRestarts() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.restarts
}

// ContainerdPID is the PID of the node's current containerd (0 while it is down).
func (n *Node) ContainerdPID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.containerd == nil || n.containerd.Exited() {
		return 0
	}
	return n.containerd.Cmd.Process.Pid
}

// makeNamespaces creates the node's network namespace (one veth end on the bridge, the
// other eth0 at n.IP) and its directories, then starts the holder process, which makes
// the bind mounts in a new mount namespace and sleeps.
func (n *Node) makeNamespaces(vethHost string) error {
	bridge, bridgeIP, prefix := n.c.Bridge, n.c.BridgeIP, bridgePrefix
	for _, p := range NodePaths {
		if err := os.MkdirAll(n.NodeDir(p), 0o755); err != nil {
			return err
		}
		if err := n.c.mountPoint(p); err != nil {
			return err
		}
	}
	cidr := fmt.Sprintf("%s/%d", n.IP, prefix)
	for _, args := range [][]string{
		{"netns", "add", n.Netns},
		{"link", "add", vethHost, "type", "veth", "peer", "name", "eth0", "netns", n.Netns},
		{"link", "set", vethHost, "master", bridge, "up"},
		{"-n", n.Netns, "addr", "add", cidr, "dev", "eth0"},
		{"-n", n.Netns, "link", "set", "eth0", "up"},
		{"-n", n.Netns, "link", "set", "lo", "up"},
		{"-n", n.Netns, "route", "add", "default", "via", bridgeIP.String()},
		// replace, not add: a route a killed run left (it goes with the bridge,
		// not with the veth) must not stop the next cluster.
		{"route", "replace", n.PodCIDR, "via", n.IP.String()},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("node %s: ip %s: %v: %s", n.Name, strings.Join(args, " "), err, out)
		}
	}
	// The holder: a new mount namespace (private: nothing of it reaches the host) in the
	// node's network namespace, the node's directories over the host paths, then sleep.
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, p := range NodePaths {
		fmt.Fprintf(&script, "mount --bind %q %q\n", n.NodeDir(p), p)
	}
	ready := filepath.Join(n.Dir, "namespaces-ready")
	fmt.Fprintf(&script, "touch %q\nexec sleep 2147483647\n", ready)
	cmd := exec.Command("nsenter", "--net=/run/netns/"+n.Netns, "--",
		"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script.String())
	logPath := filepath.Join(n.c.LogDir, n.Name+"-holder.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if n.holder, err = hostproc.StartDaemon(cmd); err != nil {
		return fmt.Errorf("node %s: namespaces: %w", n.Name, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if n.holder.Exited() || time.Now().After(deadline) {
			return fmt.Errorf("node %s: namespaces not ready; %s", n.Name, LogTail(logPath, tailBytes))
		}
		time.Sleep(20 * time.Millisecond)
	}
	n.mntNS, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", n.holder.Cmd.Process.Pid))
	return err
}

// command returns the command that runs binary with args inside the node's namespaces.
func (n *Node) command(binary string, args ...string) *exec.Cmd {
	full := append([]string{"--target", strconv.Itoa(n.holder.Cmd.Process.Pid), "--mount", "--net", "--", binary}, args...)
	cmd := exec.Command("nsenter", full...)
	cmd.Dir = n.Dir
	return cmd
}

// startDaemon runs binary in the node (command) as a daemon of the cluster's named
// NODE/name, logging to LogDir/NODE-name.log.
func (n *Node) startDaemon(name, binary string, env []string, args ...string) (*daemon, error) {
	cmd := n.command(binary, args...)
	cmd.Env = env
	return n.c.startCmd(n.Name+"/"+name, n.Name+"-"+name, cmd)
}

// superviseContainerd starts containerd and starts it again, 100 ms after it exits,
// until stopContainerd: what systemd's Restart=always (containerd.service) does, so
// that the installer's SIGTERM restarts it with the new handler.
func (n *Node) superviseContainerd(binary, config string, env []string) error {
	start := func() (*daemon, error) {
		return n.startDaemon("containerd", binary, env, "--config", config)
	}
	d, err := start()
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.containerd = d
	n.supervising = make(chan struct{})
	n.mu.Unlock()
	go func() {
		defer close(n.supervising)
		for {
			n.mu.Lock()
			cur := n.containerd
			n.mu.Unlock()
			<-cur.Done()
			n.mu.Lock()
			stopping := n.stopping
			n.mu.Unlock()
			if stopping {
				return
			}
			n.c.logf("kube: node %s: containerd exited (%v); starting it again", n.Name, cur.Cmd.ProcessState)
			time.Sleep(100 * time.Millisecond)
			next, err := start()
			n.mu.Lock()
			if err != nil || n.stopping {
				n.mu.Unlock()
				if next != nil {
					next.Stop(15 * time.Second)
				}
				return
			}
			n.containerd, n.restarts = next, n.restarts+1
			n.mu.Unlock()
		}
	}()
	return nil
}

// stopContainerd stops the supervision and containerd (SIGTERM, SIGKILL after grace).
func (n *Node) stopContainerd(grace time.Duration) {
	n.mu.Lock()
	n.stopping = true
	d, sup := n.containerd, n.supervising
	n.mu.Unlock()
	if d != nil {
		d.Stop(grace)
	}
	if sup != nil {
		<-sup
	}
}

// Processes lists the processes of the node other than the holder: those in its mount
// namespace (its daemons, and the shims they started, which name no path of the node's
// on their command line) and their descendants (containers, which have mount
// namespaces of their own).
func (n *Node) Processes() []hostproc.Process {
	if n.mntNS == "" {
		return nil
	}
	all, _ := hostproc.AllProcesses()
	byPID := make(map[int]hostproc.Process, len(all))
	inNS := map[int]bool{}
	for _, p := range all {
		byPID[p.PID] = p
		if n.holder != nil && p.PID == n.holder.Cmd.Process.Pid {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", p.PID)); err == nil && ns == n.mntNS {
			inNS[p.PID] = true
		}
	}
	var out []hostproc.Process
	for _, p := range all {
		ours := inNS[p.PID]
		for q := p; !ours && q.PPID > 1; {
			parent, ok := byPID[q.PPID]
			if !ok {
				break
			}
			ours, q = inNS[parent.PID], parent
		}
		if ours {
			out = append(out, p)
		}
	}
	return out
}

// remove kills what runs in the node, ends the holder and removes the network
// namespace and the veth; it returns what it could not do.
func (n *Node) remove(vethHost string) []error {
	var errs []error
	find := func() []hostproc.Process { return n.Processes() }
	if killed := hostproc.WaitThenKill(find, 5*time.Second, 2*time.Second); len(killed) > 0 {
		errs = append(errs, fmt.Errorf("node %s: killed %d process(es): %v", n.Name, len(killed), killed))
	}
	if n.holder != nil {
		n.holder.Kill()
	}
	if n.Netns != "" {
		if out, err := exec.Command("ip", "netns", "del", n.Netns).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
			errs = append(errs, fmt.Errorf("node %s: ip netns del: %v: %s", n.Name, err, out))
		}
	}
	exec.Command("ip", "link", "del", vethHost).Run() // gone with the namespace, normally
	exec.Command("ip", "route", "del", n.PodCIDR, "via", n.IP.String()).Run()
	return errs
}

// mountPoint creates host path p as an empty directory when it does not exist, for the
// nodes' bind mounts, and records it for Close.
func (c *Cluster) mountPoint(p string) error {
	if _, err := os.Stat(p); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	// The parents too, deepest last, so that Close removes them in reverse.
	var made []string
	for d := p; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		made = append([]string{d}, made...)
	}
	for _, d := range made {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("mount point %s: %w", d, err)
		}
		c.madeDirs = append(c.madeDirs, d)
	}
	return nil
}

// removeMountPoints removes the empty directories mountPoint made, deepest first.
func (c *Cluster) removeMountPoints() []error {
	var errs []error
	for i := len(c.madeDirs) - 1; i >= 0; i-- {
		if err := os.Remove(c.madeDirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) {
			errs = append(errs, fmt.Errorf("remove mount point %s: %w", c.madeDirs[i], err))
		}
	}
	c.madeDirs = nil
	return errs
}
