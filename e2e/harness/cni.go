package harness

import (
	"testing"

	"github.com/podsnapshot/podsnapshot/internal/testenv/cni"
)

// CNISubnets is the range the private CNI networks take their /24 from (cni.Subnets).
var CNISubnets = cni.Subnets

// CNINetwork is a private CNI network for one CRI containerd (internal/testenv/cni): a
// Linux bridge of its own holding the gateway address of a /24 no other network on the
// host uses, and a conflist (bridge with host-local IPAM) in a conf dir of its own.
type CNINetwork = cni.Network

// conflist is a CNI network configuration list, as the network writes it.
type conflist = cni.Conflist

// CNIBinDir returns the directory `make deps` puts the CNI plugins in: $DEPS_DIR/cni/bin,
// or _deps/cni/bin in the repository. A missing plugin fails the test.
func CNIBinDir(t testing.TB) string {
	t.Helper()
	dir, err := cni.BinDir()
	if err != nil {
		t.Fatalf("harness: %v", err)
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
	n, err := cni.New(t.TempDir())
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Remove(); err != nil {
			t.Errorf("harness: CNI network %s: %v", n.Name, err)
		}
	})
	return n
}

// libcniResults is where libcni caches the result of each attachment of a pod's netns
// to a network (cni.ResultsDir); a variable so tests can point it elsewhere.
var libcniResults = cni.ResultsDir

// removeCNIResults removes libcni's cached results whose network namespace lies below
// dir (a CRI containerd's directory), for the loopback network and the pod network alike.
func removeCNIResults(dir string) error { return cni.RemoveResults(libcniResults, dir) }
