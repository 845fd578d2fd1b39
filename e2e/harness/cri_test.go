package harness

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/podsnapshot/podsnapshot/internal/testenv/containerd"
)

// TestCRIConfig has containerd itself (`containerd config dump`, which starts nothing)
// read a generated config with CRIConfig appended: every key must be one containerd
// knows (it would only warn and ignore a misspelt one), and the values must arrive.
func TestCRIConfig(t *testing.T) {
	dir := t.TempDir()
	n := &CNINetwork{BinDir: "/cni/bin", ConfDir: "/cni/net.d"}
	extra := CRIConfig(t, CRIOptions{ShimConfig: "/etc/shim.toml", Network: n})
	config := containerd.Config(filepath.Join(dir, "root"), filepath.Join(dir, "state"),
		filepath.Join(dir, "c.sock"), "info", containerd.DisabledPlugins) + "\n" + extra
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(Binary(t, "containerd", ""), "--config", path, "config", "dump")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("containerd config dump: %v\n%s", err, stderr.String())
	}
	if strings.Contains(stderr.String(), "level=warning") {
		t.Errorf("containerd warns about the config:\n%s\nconfig:\n%s", stderr.String(), config)
	}
	dump := string(out)
	for _, want := range []string{
		"[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.podsnapshot]",
		"runtime_type = 'io.containerd.podsnapshot.v1'",
		"pod_annotations = ['dev.gvisor.*', 'podsnapshot.gke.io/*']",
		"container_annotations = ['dev.gvisor.*', 'podsnapshot.gke.io/*']",
		"ConfigPath = '/etc/shim.toml'",
		"bin_dirs = ['/cni/bin']",
		"conf_dir = '/cni/net.d'",
		"netns_mounts_under_state_dir = true",
		"restrict_oom_score_adj = true",
		"sandbox = 'podsnapshot.test/pause:latest'",
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("containerd's view of the config lacks %q:\n%s", want, dump)
		}
	}
}

// TestCNINetwork creates two networks: each gets its own bridge holding the gateway of
// its own /24 of CNISubnets and a conflist naming both; cleanup deletes the bridges.
func TestCNINetwork(t *testing.T) {
	var bridges []string
	t.Run("create", func(t *testing.T) {
		a, b := NewCNINetwork(t), NewCNINetwork(t)
		if a.Bridge == b.Bridge || a.Subnet.String() == b.Subnet.String() {
			t.Fatalf("two networks share bridge %s / %s or subnet %s / %s", a.Bridge, b.Bridge, a.Subnet, b.Subnet)
		}
		for _, n := range []*CNINetwork{a, b} {
			bridges = append(bridges, n.Bridge)
			if !CNISubnets.Contains(n.Subnet.IP) || !n.Subnet.Contains(n.Gateway) || len(n.Bridge) > 15 {
				t.Errorf("network %+v: want a /24 of %s with its gateway, a bridge name of at most 15 bytes", n, CNISubnets)
			}
			link, err := netlink.LinkByName(n.Bridge)
			if err != nil {
				t.Fatalf("bridge %s: %v", n.Bridge, err)
			}
			if link.Type() != "bridge" {
				t.Errorf("%s is a %s, want a bridge", n.Bridge, link.Type())
			}
			addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
			if err != nil || len(addrs) != 1 || !addrs[0].IP.Equal(n.Gateway) {
				t.Errorf("bridge %s has addresses %v (%v), want only %s", n.Bridge, addrs, err, n.Gateway)
			}
			files, _ := filepath.Glob(filepath.Join(n.ConfDir, "*.conflist"))
			if len(files) != 1 {
				t.Fatalf("conf dir %s holds %v, want one conflist", n.ConfDir, files)
			}
			b, err := os.ReadFile(files[0])
			if err != nil {
				t.Fatal(err)
			}
			var c conflist
			if err := json.Unmarshal(b, &c); err != nil {
				t.Fatalf("%s: %v", files[0], err)
			}
			p := c.Plugins[0]
			if c.Name != n.Name || p.Type != "bridge" || p.Bridge != n.Bridge || p.IPMasq || p.IPAM.Type != "host-local" ||
				p.IPAM.DataDir != n.DataDir || p.IPAM.Ranges[0][0].Subnet != n.Subnet.String() || p.IPAM.Ranges[0][0].Gateway != n.Gateway.String() {
				t.Errorf("conflist %s does not match network %+v:\n%s", files[0], n, b)
			}
		}
	})
	for _, br := range bridges {
		if _, err := netlink.LinkByName(br); err == nil {
			t.Errorf("bridge %s outlived its test", br)
			if link, err := netlink.LinkByName(br); err == nil {
				netlink.LinkDel(link)
			}
		}
	}
}

// TestRemoveCNIResults: a containerd's cleanup removes libcni's cached results of its
// own pods (their netns is below its directory), and only those.
func TestRemoveCNIResults(t *testing.T) {
	cache := t.TempDir()
	defer func(old string) { libcniResults = old }(libcniResults)
	libcniResults = cache
	files := map[string]string{
		"cni-loopback-a-lo":    "/tmp/psn-1/state/io.containerd.grpc.v1.cri/netns/cni-1",
		"psnbr00000001-a-eth0": "/tmp/psn-1/state/io.containerd.grpc.v1.cri/netns/cni-1",
		"cni-loopback-b-lo":    "/tmp/psn-12/state/io.containerd.grpc.v1.cri/netns/cni-2", // another containerd
		"other-c-eth0":         "/var/run/netns/cni-3",
	}
	for name, netns := range files {
		b, _ := json.Marshal(map[string]string{"kind": "cniCacheV1", "netns": netns})
		if err := os.WriteFile(filepath.Join(cache, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := removeCNIResults("/tmp/psn-1"); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		_, err := os.Stat(filepath.Join(cache, name))
		if gone, want := os.IsNotExist(err), strings.HasSuffix(name, "-a-lo") || strings.HasSuffix(name, "-a-eth0"); gone != want {
			t.Errorf("%s: removed %v, want %v", name, gone, want)
		}
	}
}
