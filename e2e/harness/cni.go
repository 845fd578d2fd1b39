package harness

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
	"testing"

	"github.com/vishvananda/netlink"
)

// CNISubnets is the range the private CNI networks take their /24 from, one per
// network: 10.222.0.0/16, far from the usual 10.88.0.0/16 of a stock containerd and from
// this machine's own addresses. A /24 already routed on the host is skipped.
var CNISubnets = &net.IPNet{IP: net.IPv4(10, 222, 0, 0).To4(), Mask: net.CIDRMask(16, 32)}

// CNINetwork is a private CNI network for one CRI containerd: a Linux bridge of its own
// holding the gateway address of a /24 no other network on the host uses (so test
// binaries running in parallel do not clash), and a conflist (bridge with host-local
// IPAM) in a conf dir of its own. The loopback plugin needs no conflist: CRI brings lo up
// with it from the same bin dir.
type CNINetwork struct {
	// Name is the network's name in the conflist (the bridge's name).
	Name string
	// Bridge is the bridge link; the harness creates it, the bridge plugin attaches each
	// pod's veth to it.
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

// CNIBinDir returns the directory `make deps` puts the CNI plugins in: $DEPS_DIR/cni/bin,
// or _deps/cni/bin in the repository. A missing plugin fails the test.
func CNIBinDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(filepath.Dir(DepsBin(t)), "cni", "bin")
	for _, p := range []string{"loopback", "bridge", "host-local"} {
		if st, err := os.Stat(filepath.Join(dir, p)); err != nil || st.Mode().Perm()&0o111 == 0 {
			t.Fatalf("harness: CNI plugin %s not found in %s (%v): run `make deps`", p, dir, err)
		}
	}
	return dir
}

// NewCNINetwork creates a private CNI network for a CRI containerd (see CRIConfig):
// the bridge with its gateway address, and the conflist. Call it before StartContainerd:
// its cleanup then runs after containerd's, and deletes the bridge and any pod veth
// still attached to it. (containerd's cleanup removes libcni's cached results of its
// pods.)
func NewCNINetwork(t testing.TB) *CNINetwork {
	t.Helper()
	dir := t.TempDir()
	h := fnv.New32a()
	h.Write([]byte(dir))
	name := fmt.Sprintf("psnbr%08x", h.Sum32()) // a link name has at most 15 bytes
	n := &CNINetwork{
		Name:    name,
		Bridge:  name,
		BinDir:  CNIBinDir(t),
		ConfDir: filepath.Join(dir, "net.d"),
		DataDir: filepath.Join(dir, "ipam"),
	}
	t.Cleanup(func() {
		if err := n.remove(); err != nil {
			t.Errorf("harness: CNI network %s: %v", n.Name, err)
		}
	})
	if err := n.claimSubnet(int(h.Sum32() % 256)); err != nil {
		t.Fatalf("harness: CNI network %s: %v", n.Name, err)
	}
	if err := n.writeConflist(); err != nil {
		t.Fatalf("harness: CNI network %s: %v", n.Name, err)
	}
	return n
}

// claimSubnet creates the bridge holding the gateway address of the first free /24 of
// CNISubnets, trying from index start on. A /24 is free when no host address or route
// lies in it. Two networks created at the same moment may both pick one; each then sees
// the other's address, and the one whose bridge is newer (higher link index) moves on.
func (n *CNINetwork) claimSubnet(start int) error {
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
	base := CNISubnets.IP.To4()
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
	return fmt.Errorf("no free /24 left in %s", CNISubnets)
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

// conflist is a CNI network configuration list (CNI spec 1.0.0).
type conflist struct {
	CNIVersion string   `json:"cniVersion"`
	Name       string   `json:"name"`
	Plugins    []plugin `json:"plugins"`
}

// plugin is the bridge plugin's configuration with its host-local IPAM.
type plugin struct {
	Type   string `json:"type"`
	Bridge string `json:"bridge"`
	// IsGateway stays false: it would make the bridge plugin enable IPv4 forwarding for
	// the whole host. The harness puts the gateway address on the bridge itself, which is
	// all the host needs to reach pod addresses; pods get no default route (the tests
	// need no traffic out of the pod's subnet).
	IsGateway   bool `json:"isGateway"`
	IPMasq      bool `json:"ipMasq"`
	HairpinMode bool `json:"hairpinMode"`
	IPAM        ipam `json:"ipam"`
}

type ipam struct {
	Type    string        `json:"type"`
	Ranges  [][]ipamRange `json:"ranges"`
	DataDir string        `json:"dataDir"`
}

type ipamRange struct {
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway"`
}

func (n *CNINetwork) writeConflist() error {
	c := conflist{
		CNIVersion: "1.0.0",
		Name:       n.Name,
		Plugins: []plugin{{
			Type:   "bridge",
			Bridge: n.Bridge,
			IPAM: ipam{
				Type:    "host-local",
				Ranges:  [][]ipamRange{{{Subnet: n.Subnet.String(), Gateway: n.Gateway.String()}}},
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

// remove deletes what the network put on the host: veths still attached to the bridge
// (a pod whose netns outlived its containerd) and the bridge.
func (n *CNINetwork) remove() error {
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

// libcniResults is where libcni caches the result of each attachment of a pod's netns
// to a network (containerd gives it no other directory). A teardown (StopPodSandbox)
// removes the pod's files; a pod never torn down leaves them.
var libcniResults = "/var/lib/cni/results"

// removeCNIResults removes libcni's cached results whose network namespace lies below
// dir (a CRI containerd's directory: its netns live in its state dir), for the
// loopback network and the pod network alike.
func removeCNIResults(dir string) error {
	ents, err := os.ReadDir(libcniResults)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read libcni cache: %w", err)
	}
	var errs []error
	for _, e := range ents {
		path := filepath.Join(libcniResults, e.Name())
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
