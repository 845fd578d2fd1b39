package podsnap

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	runc "github.com/containerd/go-runc"

	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/policy"
	"github.com/podsnapshot/podsnapshot/internal/config"
	"github.com/podsnapshot/podsnapshot/internal/workdir"
	"github.com/podsnapshot/podsnapshot/runtime/runsc"
	"github.com/podsnapshot/podsnapshot/storage"
)

// Record is what containerd's metadata says of a container: its labels (CRI copies pod
// labels onto the sandbox container; `ctr run --label` sets them), and its image
// reference and manifest digest (empty when it has no image).
type Record struct {
	Labels      map[string]string
	Image       string
	ImageDigest string
}

// Node is what the pods served by one shim share, for the shim's life: the policy loader
// of each policy directory, the opened stores and the compatibility tuple of each runsc
// build. Its zero value is not usable: set Namespace and Lookup.
type Node struct {
	// Namespace is containerd's namespace of the shim: the policy namespace of a pod
	// without a CRI namespace (ctr), and a level of the work dir.
	Namespace string
	// Lookup reads a container's record from containerd.
	Lookup func(ctx context.Context, id string) (Record, error)
	// Tuple returns the node's compatibility tuple for the runsc of cfg; nil: the runsc
	// binary's identity (compat.RunscIdentity) and flags, with the node's CPU and GPU.
	Tuple func(ctx context.Context, cfg config.Config) (compat.Tuple, error)
	// Hostname names the node in the manifests' source; "" is os.Hostname.
	Hostname string
	// Monitor runs the runsc commands the node runs itself (`runsc --version`): the
	// shim's reaper, so that its SIGCHLD loop and the command's wait do not race.
	Monitor runc.ProcessMonitor

	// swept: the work dirs of dead shims were swept (sweepOnce) by this shim.
	swept sync.Once

	// mu guards loaders, stores and tuples.
	mu      sync.Mutex
	loaders map[string]*policy.Loader
	stores  map[string]storage.Store
	tuples  map[string]compat.Tuple
}

// loader returns the policy loader of dir; one per directory for the shim's life, so
// changed files are picked up without a restart.
func (n *Node) loader(dir string) *policy.Loader {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.loaders == nil {
		n.loaders = map[string]*policy.Loader{}
	}
	l, ok := n.loaders[dir]
	if !ok {
		l = policy.NewLoader(policy.Options{Dir: dir})
		n.loaders[dir] = l
	}
	return l
}

// store opens (once per key) the store at url with opts: key names the url and whose
// credentials opts carry.
func (n *Node) store(ctx context.Context, key, url string, opts ...storage.Option) (storage.Store, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if st, ok := n.stores[key]; ok {
		return st, nil
	}
	opts = append(StoreOptions(), opts...)
	st, err := storage.Open(ctx, url, opts...)
	if err != nil {
		return nil, err
	}
	if n.stores == nil {
		n.stores = map[string]storage.Store{}
	}
	n.stores[key] = st
	return st, nil
}

// tuple is this node's compatibility tuple for the runsc of cfg, computed once per runsc
// binary and flags.
func (n *Node) tuple(ctx context.Context, cfg config.Config) (compat.Tuple, error) {
	if n.Tuple != nil {
		return n.Tuple(ctx, cfg)
	}
	cacheKey := fmt.Sprint(cfg.Runsc.Path, cfg.Runsc.Flags)
	n.mu.Lock()
	t, ok := n.tuples[cacheKey]
	n.mu.Unlock()
	if ok {
		return t, nil
	}
	r := &runsc.Runsc{Path: cfg.Runsc.Path, Root: cfg.Runsc.Root, Flags: cfg.Runsc.Flags, Monitor: n.Monitor}
	version, err := compat.RunscIdentity(ctx, cfg.Runsc.Path, r.Version, filepath.Join(cfg.WorkDir, "runsc-identity"))
	if err != nil {
		return compat.Tuple{}, err
	}
	t, err = compat.Local(ctx, compat.Options{RunscVersion: version, RunscFlags: cfg.Runsc.Flags})
	if err != nil {
		return compat.Tuple{}, err
	}
	n.mu.Lock()
	if n.tuples == nil {
		n.tuples = map[string]compat.Tuple{}
	}
	n.tuples[cacheKey] = t
	n.mu.Unlock()
	return t, nil
}

func (n *Node) hostname() string {
	if n.Hostname != "" {
		return n.Hostname
	}
	h, _ := os.Hostname()
	return h
}

// sweepOnce removes, once per shim and in the background, the pod work dirs under root
// that belong to shims that died (workdir.Clean): their checkpoint images never reached
// storage and their FUSE mounts are dead. Each shim of a pod matched by a policy does it,
// so a node cleans up after a crashed shim as soon as another such pod starts on it.
func (n *Node) sweepOnce(root string) {
	n.swept.Do(func() { go workdir.Clean(context.Background(), root) })
}
