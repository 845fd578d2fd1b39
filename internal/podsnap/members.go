package podsnap

import (
	"context"
	"fmt"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/snapkey"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
)

// member is a container that joined the pod's sandbox (under CRI: every container but
// the pause container), as the snapshot records it. Its fields are set at Join and never
// change.
type member struct {
	t    Task
	spec *specs.Spec
	// name is the CRI container name; image, imageDigest and key (snapkey.ContainerKey)
	// what the snapshot records of it. keyErr says why key could not be computed.
	name, image, imageDigest string
	key                      string
	keyErr                   error
	// layered: t was created naming its root file system layer of the pod's rootfs-only
	// snapshot (joinRootfs); its Start makes the layer (startMemberOnLayer).
	layered bool
}

// Join is called at Create of container t joining the pod's sandbox, before `runsc
// create`. It records t as a container of the pod and reports whether t waits for the
// pod's deferred restore (runsc is then not to create it: the restore will). Otherwise
// the caller creates t as usual and, if that fails, calls Leave.
func (p *Pod) Join(ctx context.Context, t Task, spec *specs.Spec) (deferred bool) {
	if p == nil {
		return false
	}
	m := p.describe(ctx, t, spec)
	deferred = p.joinDeferred(ctx, m)
	m.layered = !deferred && p.joinRootfs(m)
	if !deferred && !m.layered {
		if err := p.enableMemberTrigger(t); err != nil {
			log.G(ctx).WithError(err).WithField("id", t.ID()).Warn("the container cannot trigger the pod's checkpoint")
		}
	}
	p.membersMu.Lock()
	p.members = append(p.members, m)
	p.membersMu.Unlock()
	return deferred
}

// Leave forgets container t (its Create failed, or it was deleted).
func (p *Pod) Leave(t Task) {
	if p == nil {
		return
	}
	p.membersMu.Lock()
	defer p.membersMu.Unlock()
	for i, m := range p.members {
		if m.t == t {
			p.members = append(p.members[:i], p.members[i+1:]...)
			return
		}
	}
}

// describe reads what the snapshot records of container t: its name, image and key.
func (p *Pod) describe(ctx context.Context, t Task, spec *specs.Spec) *member {
	m := &member{t: t, spec: spec, name: spec.Annotations[oci.ContainerNameAnnotation]}
	if m.name == "" {
		m.name = t.ID()
	}
	rec, err := p.node.Lookup(ctx, t.ID())
	if err != nil {
		m.keyErr = fmt.Errorf("cannot read the container's image: %w", err)
		return m
	}
	m.image, m.imageDigest = rec.Image, rec.ImageDigest
	if m.image == "" {
		m.image = spec.Annotations[oci.ImageNameAnnotation]
	}
	m.key, m.keyErr = snapkey.ContainerKey(m.container())
	return m
}

func (m *member) container() snapkey.Container {
	return snapkey.Container{Name: m.name, Image: m.image, ImageDigest: m.imageDigest, Spec: m.spec}
}

// podKey returns the key of the whole pod (the sandbox and every container that joined
// it) and the record of the joined containers for the manifest. A container whose key
// could not be computed fails it: a snapshot that could never be matched is not stored.
// A container that exited and was replaced by a later one of the same name (kubelet
// restarts a container as a new one and keeps the old until garbage collection) is
// left out: the pod is the replacement.
func (p *Pod) podKey() (string, []manifest.ContainerKey, []manifest.ContainerInfo, error) {
	members := p.currentMembers()
	in := snapkey.Input{
		Namespace:   p.namespace,
		Policy:      p.policyName(),
		GroupLabels: p.entry.Policy.GroupLabels(),
		PodLabels:   p.labels,
		Containers:  []snapkey.Container{p.sandbox},
	}
	var keys []manifest.ContainerKey
	var infos []manifest.ContainerInfo
	for _, m := range members {
		if m.keyErr != nil {
			return "", nil, nil, fmt.Errorf("container %s: %w", m.t.ID(), m.keyErr)
		}
		in.Containers = append(in.Containers, m.container())
		keys = append(keys, manifest.ContainerKey{Name: m.name, Key: m.key})
		infos = append(infos, manifest.ContainerInfo{Name: m.name, ID: m.t.ID(), Image: m.image, ImageDigest: m.imageDigest})
	}
	key, err := snapkey.Compute(in)
	if err != nil {
		return "", nil, nil, fmt.Errorf("snapshot key: %w", err)
	}
	return key, keys, infos, nil
}

// currentMembers returns the members in order, without those replaced: exited, with a
// later member of the same name.
func (p *Pod) currentMembers() []*member {
	p.membersMu.Lock()
	defer p.membersMu.Unlock()
	var out []*member
	for i, m := range p.members {
		replaced := false
		for _, later := range p.members[i+1:] {
			if later.name == m.name {
				replaced = true
			}
		}
		if replaced && m.t.Exited() {
			continue
		}
		out = append(out, m)
	}
	return out
}

// memberOf returns the record of container t, nil if t is not a member.
func (p *Pod) memberOf(t Task) *member {
	p.membersMu.Lock()
	defer p.membersMu.Unlock()
	for _, m := range p.members {
		if m.t == t {
			return m
		}
	}
	return nil
}
