package podsnap

import (
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/podsnapshot/podsnapshot/runtime/oci"
)

// What a pod may say to gVisor. CRI passes every pod and container annotation matching
// the handler's pod_annotations and container_annotations (dev.gvisor.*) into the specs
// the shim gets, and runsc reads many dev.gvisor.* keys: checkpoint paths
// (dev.gvisor.internal.checkpoint.*: a pod would have its memory written into any host
// directory), root file system layers and sources (dev.gvisor.tar.rootfs.upper*,
// dev.gvisor.spec.rootfs.*: any host file or device read into the pod), the sandbox's
// cgroup (dev.gvisor.spec.cgroup-parent), flag overrides (dev.gvisor.flag.*), device
// proxies (dev.gvisor.internal.nvproxy, tpuproxy), seccomp and CPU features. A pod may
// set what GKE Sandbox lets it set, per volume: gVisor's mount hints
// (runsc/boot/mount_hints.go) and its emptyDir opt-out (gVisor's
// pkg/shim/v1/utils/volumes.go). Every other dev.gvisor.* key is the shim's alone: it
// drops them at Create and sets the ones it needs afterwards (workload-trigger checkpoint
// annotations, a rootfs-only restore's layer, the emptyDir hints).

// mountHintFields are the fields of a mount hint runsc knows (MountHint.setField); a key
// with another field is refused by runsc with a warning, so it is dropped here too.
var mountHintFields = map[string]bool{"source": true, "type": true, "share": true, "options": true, "directfs": true}

// podMaySet reports whether a pod may set annotation k: anything outside dev.gvisor.*
// (not gVisor's), dev.gvisor.spec.mount.<volume>.{source,type,share,options,directfs}
// and dev.gvisor.empty-dir.<volume>.force-shared, where <volume> is non-empty and has no
// dot (runsc splits the key at dots: "a.b.type" is no hint of volume "a.b").
func podMaySet(k string) bool {
	if !strings.HasPrefix(k, oci.GVisorPrefix) {
		return true
	}
	if rest, ok := strings.CutPrefix(k, oci.MountHintPrefix); ok {
		volume, field, ok := strings.Cut(rest, ".")
		return ok && volume != "" && mountHintFields[field]
	}
	if rest, ok := strings.CutPrefix(k, oci.EmptyDirPrefix); ok {
		volume, ok := strings.CutSuffix(rest, ".force-shared")
		return ok && volume != "" && !strings.Contains(volume, ".")
	}
	return false
}

// DropPodGVisorAnnotations removes from a container's spec the dev.gvisor.* annotations a
// pod may not set (podMaySet), and rewrites the spec in bundle when there were any. It is
// called on every spec the shim is given, before it adds its own, so what it drops never
// reaches runsc nor the snapshot key. It returns the keys removed, sorted; on a write
// error the spec in memory has them removed and the bundle's is unchanged.
func DropPodGVisorAnnotations(bundle string, spec *specs.Spec) ([]string, error) {
	var dropped []string
	for k := range spec.Annotations {
		if !podMaySet(k) {
			dropped = append(dropped, k)
		}
	}
	if len(dropped) == 0 {
		return nil, nil
	}
	sort.Strings(dropped)
	for _, k := range dropped {
		delete(spec.Annotations, k)
	}
	return dropped, oci.WriteSpec(bundle, spec)
}
