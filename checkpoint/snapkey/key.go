// Package snapkey computes the snapshot key: the sha256 of a canonical JSON form of
// everything in a pod's containers that a restored snapshot depends on. Two pods with the
// same key can restore each other's snapshots; anything that differs between replicas of
// one workload (IDs, pod name and UID, per-pod paths) is left out.
package snapkey

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// FormatVersion is part of the canonical form: changing what goes into the key bumps it,
// so snapshots keyed by an older form are never mistaken for matches.
const FormatVersion = 1

// Container is one container of the pod as the shim sees it at Create.
type Container struct {
	// Name is the container name (CRI: io.kubernetes.cri.container-name; the sandbox:
	// its pod-independent role, e.g. "sandbox"). Not an ID.
	Name string
	// Image is the image reference, e.g. "docker.io/library/nginx:1.27".
	Image string
	// ImageDigest is the resolved manifest digest, e.g. "sha256:ab12...".
	ImageDigest string
	// Spec is the container's OCI runtime spec (required).
	Spec *specs.Spec
	// Sandbox marks the pod's sandbox container (the pause container under CRI, the
	// container itself under ctr). At most one.
	Sandbox bool
}

// Input is everything the key depends on.
type Input struct {
	// Namespace and Policy name the PodSnapshotPolicy that matched the pod.
	Namespace string
	Policy    string
	// GroupLabels are the policy's snapshotGroupingRules.groupByLabelValue.labels.
	GroupLabels []string
	// PodLabels are the pod's labels; only the values of GroupLabels enter the key.
	PodLabels map[string]string
	// Containers are the pod's containers, in any order.
	Containers []Container
}

// Compute returns the key of in: 64 lowercase hex digits, the sha256 of Canonical(in).
// It fails when Canonical does.
func Compute(in Input) (string, error) {
	b, err := Canonical(in)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// ContainerKey returns the key of one container alone: 64 lowercase hex digits, the
// sha256 of FormatVersion and the container's canonical form (canonicalContainer). The
// manifest records it for each of a pod's containers other than the sandbox, so that a
// pod restored container by container (CRI, where containers arrive after the sandbox)
// can tell, as each one arrives, whether it is the container the snapshot was taken with.
// Errors: a container without a name or a spec.
func ContainerKey(c Container) (string, error) {
	if c.Name == "" {
		return "", errors.New("snapkey: container has no name")
	}
	if c.Spec == nil {
		return "", fmt.Errorf("snapkey: container %q has no OCI spec", c.Name)
	}
	b, err := json.Marshal(struct {
		Version   int                `json:"v"`
		Container canonicalContainer `json:"container"`
	}{FormatVersion, canonicalize(c)})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// Canonical returns the canonical JSON form the key hashes (useful to explain why two
// keys differ). Field by field, see canonicalPod and canonicalContainer. Errors: no
// containers, a container without a name or a spec, two containers with one name, more
// than one sandbox.
func Canonical(in Input) ([]byte, error) {
	if len(in.Containers) == 0 {
		return nil, errors.New("snapkey: no containers")
	}
	pod := canonicalPod{
		Version:   FormatVersion,
		Namespace: in.Namespace,
		Policy:    in.Policy,
		Group:     GroupValues(in.GroupLabels, in.PodLabels),
	}
	seen := map[string]bool{}
	sandboxes := 0
	for i, c := range in.Containers {
		if c.Name == "" {
			return nil, fmt.Errorf("snapkey: container %d has no name", i)
		}
		if c.Spec == nil {
			return nil, fmt.Errorf("snapkey: container %q has no OCI spec", c.Name)
		}
		if seen[c.Name] {
			return nil, fmt.Errorf("snapkey: two containers named %q", c.Name)
		}
		seen[c.Name] = true
		if c.Sandbox {
			sandboxes++
		}
		pod.Containers = append(pod.Containers, canonicalize(c))
	}
	if sandboxes > 1 {
		return nil, fmt.Errorf("snapkey: %d sandbox containers, want at most 1", sandboxes)
	}
	sort.SliceStable(pod.Containers, func(i, j int) bool {
		a, b := pod.Containers[i], pod.Containers[j]
		if a.Sandbox != b.Sandbox {
			return a.Sandbox
		}
		return a.Name < b.Name
	})
	return json.Marshal(pod)
}

// GroupLabel is one grouping label and the pod's value for it.
type GroupLabel struct {
	Label string `json:"label"`
	Value string `json:"value"`
	// Present is false when the pod lacks the label (so "" and absent differ).
	Present bool `json:"present"`
}

// GroupValues returns the pod's values of the grouping labels, sorted by label, duplicates
// dropped. The manifest records them and retention groups snapshots by them.
func GroupValues(groupLabels []string, podLabels map[string]string) []GroupLabel {
	var out []GroupLabel
	seen := map[string]bool{}
	for _, l := range groupLabels {
		if seen[l] {
			continue
		}
		seen[l] = true
		v, ok := podLabels[l]
		out = append(out, GroupLabel{Label: l, Value: v, Present: ok})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Label < out[j].Label })
	return out
}

// canonicalPod is the top of the canonical form. JSON keeps struct fields in this order and
// sorts map keys, so equal inputs give equal bytes.
type canonicalPod struct {
	// Version is FormatVersion.
	Version int `json:"v"`
	// Namespace and Policy: a snapshot belongs to one policy of one namespace.
	Namespace string `json:"namespace"`
	Policy    string `json:"policy"`
	// Group: the values of the policy's grouping labels must match at checkpoint and restore.
	Group []GroupLabel `json:"group"`
	// Containers: the sandbox first, then by name.
	Containers []canonicalContainer `json:"containers"`
}
