// Package manifest is a snapshot's manifest.json: what the snapshot is (key, compatibility
// tuple, labels, files) and its state. Writing the manifest last commits a snapshot. The
// package also renders a manifest as the PodSnapshot API object and as a `podsnapshot ls`
// table row, and names the snapshot's objects in the store.
package manifest

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/retention"
	"github.com/podsnapshot/podsnapshot/checkpoint/snapkey"
	"github.com/podsnapshot/podsnapshot/storage"
)

// APIVersion identifies this manifest format. Fields may be added without changing it
// (Decode ignores unknown fields); any other change gets a new version.
const APIVersion = "podsnapshot.gke.io/manifest/v1"

// MaxSize is the largest manifest Decode accepts, in bytes.
const MaxSize = 4 << 20

// State is a snapshot's lifecycle state.
type State string

const (
	// StatePending: the checkpoint is under way (never stored: a stored manifest commits).
	StatePending State = "Pending"
	// StateCommitted: every file is stored and verified; the snapshot can restore.
	StateCommitted State = "Committed"
	// StateFailed: the checkpoint failed; Reason says why. Kept for `podsnapshot ls`.
	StateFailed State = "Failed"
)

// Manifest is the content of manifest.json.
type Manifest struct {
	// APIVersion is APIVersion.
	APIVersion string `json:"apiVersion"`
	// UUID is the snapshot's name, a lowercase random UUID (NewUUID).
	UUID string `json:"uuid"`
	// Namespace and Policy are the PodSnapshotPolicy the snapshot was taken under.
	Namespace string `json:"namespace"`
	Policy    string `json:"policy"`
	// Key is the snapshot key of the whole pod (snapkey.Compute over every container):
	// 64 lowercase hex digits.
	Key string `json:"key"`
	// SandboxKey is the key of the sandbox container alone (snapkey.Compute with the
	// pod's namespace, policy and grouping labels and only the sandbox): what a new pod is
	// looked up by at its sandbox's Create, when its other containers are not known yet.
	// Empty in manifests of pods of one container, where it equals Key (see IndexKey).
	SandboxKey string `json:"sandboxKey,omitempty"`
	// Containers are the pod's containers other than the sandbox (CRI app containers),
	// each with its snapkey.ContainerKey, in the order they joined the sandbox. A restore
	// waits until each of them has arrived with that key.
	Containers []ContainerKey `json:"containers,omitempty"`
	// Scope is what the snapshot holds: ScopeWholePod (memory, processes and file
	// systems: checkpoint.img, pages_meta.img, pages.img) or ScopeRootfsOnly (one root
	// file system layer per container, RootfsFile). Empty in manifests written before
	// scopes existed: whole-pod.
	Scope string `json:"scope,omitempty"`
	// Compat is the node's compatibility tuple at checkpoint.
	Compat compat.Tuple `json:"compat"`
	// Labels are the pod's labels at checkpoint.
	Labels map[string]string `json:"labels,omitempty"`
	// GroupLabels are the values of the policy's grouping labels, sorted by label.
	GroupLabels []snapkey.GroupLabel `json:"groupLabels,omitempty"`
	// Files are the stored files, names relative to the store root
	// ("<namespace>/<policy>/<uuid>/<file>"), without the manifest itself.
	Files []storage.FileInfo `json:"files"`
	// CreatedAt is when the checkpoint was taken (UTC).
	CreatedAt time.Time `json:"createdAt"`
	// LastAccessTime is when a restore last used the snapshot; zero: never.
	LastAccessTime time.Time `json:"lastAccessTime,omitzero"`
	// State is Pending, Committed or Failed.
	State State `json:"state"`
	// Reason says why the state is Failed; empty otherwise.
	Reason string `json:"reason,omitempty"`
	// Source describes the pod the snapshot was taken from (informational only: none of it
	// is compared at restore).
	Source Source `json:"source"`

	// ReadFrom is the object name (relative to the store root) this manifest was read
	// from, set by whoever read it after CheckLocation passed; empty for a manifest built
	// in memory. A manifest is rewritten and deleted only there. Not stored.
	ReadFrom string `json:"-"`
}

// Source is the pod a snapshot was taken from.
type Source struct {
	// Node is the node's host name.
	Node string `json:"node,omitempty"`
	// Pod and PodUID are the pod's name and UID (CRI), empty under ctr.
	Pod    string `json:"pod,omitempty"`
	PodUID string `json:"podUID,omitempty"`
	// SandboxID is the sandbox container's ID.
	SandboxID string `json:"sandboxID,omitempty"`
	// Containers are the pod's containers, sandbox first.
	Containers []ContainerInfo `json:"containers,omitempty"`
}

// ContainerKey is one container recorded for restore: its name (CRI container name)
// and its snapkey.ContainerKey.
type ContainerKey struct {
	Name string `json:"name"`
	Key  string `json:"key"`
}

// Snapshot scopes (Manifest.Scope), the values of a policy's spec.snapshotScope.
const (
	ScopeWholePod   = "whole-pod"
	ScopeRootfsOnly = "rootfs-only"
)

// RootfsOnly reports whether m holds root file system layers only (no memory).
func (m *Manifest) RootfsOnly() bool { return m.Scope == ScopeRootfsOnly }

// ScopeName is m's scope for display: Scope, or ScopeWholePod when empty.
func (m *Manifest) ScopeName() string {
	if m.Scope == "" {
		return ScopeWholePod
	}
	return m.Scope
}

// RootfsLayers maps each container of a rootfs-only snapshot to its layer file in
// m.Files.
func (m *Manifest) RootfsLayers() map[string]storage.FileInfo {
	out := map[string]storage.FileInfo{}
	prefix := m.Dir() + "/"
	for _, f := range m.Files {
		if c, ok := RootfsContainer(strings.TrimPrefix(f.Name, prefix)); ok {
			out[c] = f
		}
	}
	return out
}

// IndexKey is the key the snapshot is indexed and looked up by: SandboxKey, or Key when
// the pod had only its sandbox container.
func (m *Manifest) IndexKey() string {
	if m.SandboxKey != "" {
		return m.SandboxKey
	}
	return m.Key
}

// ShortKeyLen is how many hex digits of a snapshot key ShortKey keeps: 64 bits, enough
// to tell the keys of one store apart in messages and tables.
const ShortKeyLen = 16

// ShortKey is key cut to its first ShortKeyLen characters, for messages and the KEY
// column of `podsnapshot ls -o wide`; a shorter key is returned as it is.
func ShortKey(key string) string {
	if len(key) > ShortKeyLen {
		return key[:ShortKeyLen]
	}
	return key
}

// Sizes returns the bytes of m's files before compression (raw) and as stored, summed
// over m.Files; both are 0 for a manifest without files.
func (m *Manifest) Sizes() (raw, stored int64) {
	for _, f := range m.Files {
		raw += f.RawSize
		stored += f.StoredSize
	}
	return raw, stored
}

// ContainerInfo is one source container.
type ContainerInfo struct {
	Name        string `json:"name"`
	ID          string `json:"id,omitempty"`
	Image       string `json:"image,omitempty"`
	ImageDigest string `json:"imageDigest,omitempty"`
	Sandbox     bool   `json:"sandbox,omitempty"`
}

// New returns a Pending manifest for a new snapshot: a fresh UUID, APIVersion set,
// CreatedAt now in UTC. The caller fills in the rest and moves State on.
func New(namespace, policy, key string, tuple compat.Tuple, now time.Time) *Manifest {
	return &Manifest{
		APIVersion: APIVersion,
		UUID:       NewUUID(),
		Namespace:  namespace,
		Policy:     policy,
		Key:        key,
		Compat:     tuple,
		CreatedAt:  now.UTC(),
		State:      StatePending,
	}
}

// Dir is the snapshot's directory relative to the store root.
func (m *Manifest) Dir() string { return Dir(m.Namespace, m.Policy, m.UUID) }

// ObjectName is the object name of the manifest itself.
func (m *Manifest) ObjectName() string { return ManifestName(m.Namespace, m.Policy, m.UUID) }

// Group is the retention group of the snapshot: its grouping label values as
// "label=value" pairs joined by ",", absent labels as "label!"; "" without grouping labels.
func (m *Manifest) Group() string {
	parts := make([]string, len(m.GroupLabels))
	for i, g := range m.GroupLabels {
		if g.Present {
			parts[i] = g.Label + "=" + g.Value
		} else {
			parts[i] = g.Label + "!"
		}
	}
	return strings.Join(parts, ",")
}

// Encode validates m and returns it as indented JSON ending in a newline. A manifest that
// fails Validate is an error, never written.
func Encode(m *Manifest) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", m.Dir(), err)
	}
	return append(b, '\n'), nil
}

// Decode parses and validates a manifest. It fails for more than MaxSize bytes, bad JSON,
// another apiVersion (`apiVersion: Unsupported value: ...`), or any Validate error. Unknown
// fields are ignored.
func Decode(data []byte) (*Manifest, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("manifest: %d bytes, more than %d", len(data), MaxSize)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// RetentionSnapshot is what package retention needs of m: UUID, Group, CreatedAt,
// LastAccessTime.
func (m *Manifest) RetentionSnapshot() retention.Snapshot {
	return retention.Snapshot{ID: m.UUID, Group: m.Group(), CreatedAt: m.CreatedAt, LastAccessTime: m.LastAccessTime}
}
