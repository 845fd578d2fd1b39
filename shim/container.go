package shim

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/podsnapshot/podsnapshot/internal/config"
	"github.com/podsnapshot/podsnapshot/runtime/runsc"
)

// container is one containerd container served by this shim: a sandbox (a pod's pause
// container, or a plain ctr container) or a container joining its pod's sandbox.
type container struct {
	id        string
	bundle    string
	namespace string
	// sandboxID is the runsc sandbox this container lives in (its own ID for a sandbox).
	sandboxID string
	sandbox   bool
	spec      *specs.Spec
	cfg       config.Config
	runsc     *runsc.Runsc
	rootfs    string // mounted by the shim when containerd passed rootfs mounts
	init      *process
	// snap is the snapshot state of a sandbox matched by a policy; nil otherwise.
	snap *podSnap

	// For a container joining a sandbox that has snap: its name (CRI container name),
	// image, and snapshot key (snapkey.ContainerKey); keyErr says why key is empty.
	name, image, imageDigest string
	key                      string
	keyErr                   error

	// execs is guarded by service.mu.
	execs map[string]*process
}

// bundleState is what the shim persists in the bundle so that `shim delete` (run by
// containerd after the serving shim died) can clean up runsc state without the config.
type bundleState struct {
	RunscPath  string            `json:"runscPath"`
	RunscRoot  string            `json:"runscRoot"`
	RunscFlags map[string]string `json:"runscFlags,omitempty"`
	Rootfs     string            `json:"rootfs,omitempty"`
}

const bundleStateFile = "podsnapshot-state.json"

func writeBundleState(bundle string, st bundleState) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(bundle, bundleStateFile), data, 0o600); err != nil {
		return fmt.Errorf("write bundle state: %w", err)
	}
	return nil
}

func readBundleState(bundle string) (bundleState, error) {
	var st bundleState
	data, err := os.ReadFile(filepath.Join(bundle, bundleStateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("parse %s: %w", filepath.Join(bundle, bundleStateFile), err)
	}
	return st, nil
}
