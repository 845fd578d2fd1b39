package shim

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/podsnapshot/podsnapshot/runtime/oci"
)

// gVisor mount hints (runsc/boot/mount_hints.go): pod annotations
// dev.gvisor.spec.mount.<volume>.{source,type,share,options} on the sandbox tell runsc
// that the pod's containers mount one volume, and how: type tmpfs with share pod (or
// container) makes the volume a tmpfs inside the sandbox, shared by the containers. Its
// contents are then part of the sandbox's memory, so a checkpoint saves them and a
// restore brings them back: this is how emptyDir contents survive a snapshot.
const mountHintPrefix = "dev.gvisor.spec.mount."

// fillVolumeSources completes the mount hints of a sandbox's spec: a hint with a type but
// no source gets the volume's host path, <podsDir>/<pod uid>/volumes/<plugin>/<volume>,
// as kubelet lays volumes out (Kubernetes users annotate the pod with the type and share
// only; the path holds the pod's UID). runsc matches the containers' mounts to the hint by
// that path. The spec in bundle is rewritten when a source was added. Errors name the
// volume; hints already complete, and specs without hints, are left alone.
func fillVolumeSources(ctx context.Context, bundle string, spec *specs.Spec, podsDir string) error {
	var volumes []string
	for k := range spec.Annotations {
		if !strings.HasPrefix(k, mountHintPrefix) || !strings.HasSuffix(k, ".type") {
			continue
		}
		name := strings.TrimSuffix(strings.TrimPrefix(k, mountHintPrefix), ".type")
		if name == "" || strings.Contains(name, ".") {
			continue
		}
		if _, ok := spec.Annotations[mountHintPrefix+name+".source"]; !ok {
			volumes = append(volumes, name)
		}
	}
	if len(volumes) == 0 {
		return nil
	}
	uid := spec.Annotations[oci.SandboxUIDAnnotation]
	if uid == "" {
		return fmt.Errorf("mount hints for volumes %v have no source, and the sandbox has no %s annotation to find them by", volumes, oci.SandboxUIDAnnotation)
	}
	sort.Strings(volumes)
	sources := map[string]string{}
	for _, name := range volumes {
		pattern := filepath.Join(podsDir, uid, "volumes", "*", name)
		dirs, err := filepath.Glob(pattern)
		if err != nil || len(dirs) != 1 {
			return fmt.Errorf("volume %s of mount hint %s%s.type: want one directory matching %s, found %v", name, mountHintPrefix, name, pattern, dirs)
		}
		sources[name] = dirs[0]
	}
	// All or nothing: the spec in memory stays the one in the bundle.
	for name, dir := range sources {
		spec.Annotations[mountHintPrefix+name+".source"] = dir
		log.G(ctx).Debugf("mount hint %s: source %s", name, dir)
	}
	return oci.WriteSpec(bundle, spec)
}
