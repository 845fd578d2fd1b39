// Package cni makes a private CNI network for a CRI containerd on this machine: a Linux
// bridge of its own holding the gateway of a free /24, and a conflist (bridge with
// host-local IPAM) in a conf dir of its own; Remove takes it off the host again, and
// RemoveResults drops libcni's cached results of a containerd's pods. Like the other
// testenv packages it reports through errors (no testing.TB): the e2e harness
// (e2e/harness.NewCNINetwork) and the Kubernetes demo (hack/demo-kubernetes) use it.
package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/podsnapshot/podsnapshot/internal/testenv"
)

// Subnets is the range the private CNI networks take their /24 from, one per
// network: 10.222.0.0/16, far from the usual 10.88.0.0/16 of a stock containerd and from
// this machine's own addresses. A /24 already routed on the host is skipped.
var Subnets = &net.IPNet{IP: net.IPv4(10, 222, 0, 0).To4(), Mask: net.CIDRMask(16, 32)}

// Plugins are the CNI plugins a Network needs in its BinDir (`make deps`).
var Plugins = []string{"loopback", "bridge", "host-local"}

// Network is a private CNI network for one CRI containerd: a Linux bridge of its own
// holding the gateway address of a /24 no other network on the host uses (so test
// binaries running in parallel do not clash), and a conflist (bridge with host-local
// IPAM) in a conf dir of its own. The loopback plugin needs no conflist: CRI brings lo up
// with it from the same bin dir.
type Network struct {
	// Name is the network's name in the conflist (the bridge's name).
	Name string
	// Bridge is the bridge link; New creates it, the bridge plugin attaches each pod's
	// veth to it.
	Bridge string
	// Subnet is the /24 pods get their addresses from.
	Subnet *net.IPNet
	// Gateway is the bridge's address (.1 of Subnet): the host reaches pods from it.
	Gateway net.IP
	// BinDir holds the CNI plugins (make deps: loopback, bridge, host-local).
	BinDir string
	// ConfDir is the CNI conf dir, holding only this network's conflist.
	ConfDir string
	// DataDir is host-local's store of allocated addresses.
	DataDir string
}

// BinDir returns the directory `make deps` puts the CNI plugins in: $DEPS_DIR/cni/bin,
// or _deps/cni/bin in the repository. A missing plugin is an error saying to run
// `make deps`.
func BinDir() (string, error) {
	bin, err := testenv.DepsBin()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(filepath.Dir(bin), "cni", "bin")
	for _, p := range Plugins {
		if st, err := os.Stat(filepath.Join(dir, p)); err != nil || st.Mode().Perm()&0o111 == 0 {
			return "", fmt.Errorf("CNI plugin %s not found in %s (%v): run `make deps`", p, dir, err)
		}
	}
	return dir, nil
}

// New creates a private CNI network whose conf dir (dir/net.d) and IPAM store
// (dir/ipam) lie in dir, which must exist: the bridge, named after dir, with its gateway
// address, and the conflist. Create it before the containerd that uses it and Remove it
// after that containerd stopped (and after RemoveResults). On error it removes what it
// made.
func New(dir string) (*Network, error) {
	binDir, err := BinDir()
	if err != nil {
		return nil, err
	}
	h := fnv.New32a()
	h.Write([]byte(dir))
	name := fmt.Sprintf("psnbr%08x", h.Sum32()) // a link name has at most 15 bytes
	n := &Network{
		Name:    name,
		Bridge:  name,
		BinDir:  binDir,
		ConfDir: filepath.Join(dir, "net.d"),
		DataDir: filepath.Join(dir, "ipam"),
	}
	if err := n.claimSubnet(int(h.Sum32() % 256)); err != nil {
		// A bridge of that name that was there before is not ours to delete.
		if !errors.Is(err, syscall.EEXIST) {
			if rerr := n.Remove(); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		return nil, fmt.Errorf("CNI network %s: %w", n.Name, err)
	}
	if err := n.writeConflist(); err != nil {
		if rerr := n.Remove(); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return nil, fmt.Errorf("CNI network %s: %w", n.Name, err)
	}
	return n, nil
}

// claimSubnet creates the bridge holding the gateway address of the first free /24 of
// Subnets, trying from index start on. A /24 is free when no host address or route
// lies in it. Two networks created at the same moment may both pick one; each then sees
// the other's address, and the one whose bridge is newer (higher link index) moves on.
func (n *Network) claimSubnet(start int) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.Bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s: %w", n.Bridge, err)
	}
	link, err := netlink.LinkByName(n.Bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", n.Bridge, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set bridge %s up: %w", n.Bridge, err)
	}
	base := Subnets.IP.To4()
	for i := 0; i < 256; i++ {
		idx := (start + i) % 256
		subnet := &net.IPNet{IP: net.IPv4(base[0], base[1], byte(idx), 0).To4(), Mask: net.CIDRMask(24, 32)}
		used, err := subnetUsed(subnet, -1)
		if err != nil {
			return err
		}
		if used {
			continue
		}
		gw := &net.IPNet{IP: net.IPv4(base[0], base[1], byte(idx), 1).To4(), Mask: subnet.Mask}
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: gw}); err != nil {
			return fmt.Errorf("add %s to bridge %s: %w", gw, n.Bridge, err)
		}
		// Another network may have taken the same /24 meanwhile.
		lost, err := subnetUsed(subnet, link.Attrs().Index)
		if err != nil {
			return err
		}
		if lost {
			if err := netlink.AddrDel(link, &netlink.Addr{IPNet: gw}); err != nil {
				return fmt.Errorf("remove %s from bridge %s: %w", gw, n.Bridge, err)
			}
			continue
		}
		n.Subnet, n.Gateway = subnet, gw.IP
		return nil
	}
	return fmt.Errorf("no free /24 left in %s", Subnets)
}

// subnetUsed tells whether a host address or route lies in subnet. With ours >= 0 it
// looks only at addresses, and only at those of links with a lower index than ours (an
// older claim, which wins).
func subnetUsed(subnet *net.IPNet, ours int) (bool, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return false, fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		if subnet.Contains(a.IP) && (ours < 0 || a.LinkIndex < ours) {
			return true, nil
		}
	}
	if ours >= 0 {
		return false, nil
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return false, fmt.Errorf("list host routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil && (r.Dst.Contains(subnet.IP) || subnet.Contains(r.Dst.IP)) && !isDefault(r.Dst) {
			return true, nil
		}
	}
	return false, nil
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// Conflist is a CNI network configuration list (CNI spec 1.0.0).
type Conflist struct {
	CNIVersion string   `json:"cniVersion"`
	Name       string   `json:"name"`
	Plugins    []Plugin `json:"plugins"`
}

// Plugin is the bridge plugin's configuration with its host-local IPAM.
type Plugin struct {
	Type   string `json:"type"`
	Bridge string `json:"bridge"`
	// IsGateway stays false: it would make the bridge plugin enable IPv4 forwarding for
	// the whole host. New puts the gateway address on the bridge itself, which is
	// all the host needs to reach pod addresses; pods get no default route (the tests
	// need no traffic out of the pod's subnet).
	IsGateway   bool `json:"isGateway"`
	IPMasq      bool `json:"ipMasq"`
	HairpinMode bool `json:"hairpinMode"`
	IPAM        IPAM `json:"ipam"`
}

// IPAM is host-local's configuration.
type IPAM struct {
	Type    string        `json:"type"`
	Ranges  [][]IPAMRange `json:"ranges"`
	DataDir string        `json:"dataDir"`
}

// IPAMRange is one range of host-local.
type IPAMRange struct {
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway"`
}

func (n *Network) writeConflist() error {
	c := Conflist{
		CNIVersion: "1.0.0",
		Name:       n.Name,
		Plugins: []Plugin{{
			Type:   "bridge",
			Bridge: n.Bridge,
			IPAM: IPAM{
				Type:    "host-local",
				Ranges:  [][]IPAMRange{{{Subnet: n.Subnet.String(), Gateway: n.Gateway.String()}}},
				DataDir: n.DataDir,
			},
		}},
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("encode conflist: %w", err)
	}
	if err := os.MkdirAll(n.ConfDir, 0o755); err != nil {
		return fmt.Errorf("conf dir: %w", err)
	}
	path := filepath.Join(n.ConfDir, "10-"+n.Name+".conflist")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write conflist: %w", err)
	}
	return nil
}

// Remove deletes what the network put on the host: veths still attached to the bridge
// (a pod whose netns outlived its containerd) and the bridge.
func (n *Network) Remove() error {
	var errs []error
	if link, err := netlink.LinkByName(n.Bridge); err == nil {
		links, err := netlink.LinkList()
		if err != nil {
			errs = append(errs, fmt.Errorf("list links: %w", err))
		}
		for _, l := range links {
			if l.Attrs().MasterIndex == link.Attrs().Index {
				if err := netlink.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
					errs = append(errs, fmt.Errorf("delete %s on bridge %s: %w", l.Attrs().Name, n.Bridge, err))
				}
			}
		}
		if err := netlink.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge %s: %w", n.Bridge, err))
		}
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		errs = append(errs, fmt.Errorf("bridge %s: %w", n.Bridge, err))
	}
	return errors.Join(errs...)
}

// ResultsDir is where libcni caches the result of each attachment of a pod's netns to
// a network (containerd gives it no other directory). A teardown (StopPodSandbox)
// removes the pod's files; a pod never torn down leaves them.
const ResultsDir = "/var/lib/cni/results"

// RemoveResults removes libcni's cached results (in cacheDir, normally ResultsDir)
// whose network namespace lies below dir (a CRI containerd's directory: its netns live
// in its state dir), for the loopback network and the pod network alike.
func RemoveResults(cacheDir, dir string) error {
	ents, err := os.ReadDir(cacheDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read libcni cache: %w", err)
	}
	var errs []error
	for _, e := range ents {
		path := filepath.Join(cacheDir, e.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			continue // removed meanwhile, by a teardown
		}
		var cached struct {
			NetNS string `json:"netns"`
		}
		if json.Unmarshal(b, &cached) != nil || !strings.HasPrefix(cached.NetNS, dir+"/") {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove libcni cache: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Left describes what of the network is still on the host after Remove: the bridge,
// or nil.
func (n *Network) Left() []string {
	if _, err := netlink.LinkByName(n.Bridge); err == nil {
		return []string{"bridge " + n.Bridge}
	}
	return nil
}
