package shim

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/podsnapshot/podsnapshot/runtime/oci"
)

// gVisor mount hints (runsc/boot/mount_hints.go): pod annotations
// dev.gvisor.spec.mount.<volume>.{source,type,share,options} on the sandbox tell runsc
// that the pod's containers mount one volume, and how: type tmpfs with share pod (or
// container) makes the volume a tmpfs inside the sandbox, shared by the containers. Its
// contents are then part of the sandbox's memory, so a checkpoint saves them and a
// restore brings them back: this is how emptyDir contents survive a snapshot.
const mountHintPrefix = oci.MountHintPrefix

// maxQuoted is the most bytes of an annotation's value an error quotes.
const maxQuoted = 80

// fillVolumeSources completes the mount hints of a sandbox's spec: a hint with a type but
// no source gets the volume's host path, <podsDir>/<pod uid>/volumes/<plugin>/<volume>,
// as kubelet lays volumes out (Kubernetes users annotate the pod with the type and share
// only; the path holds the pod's UID). runsc matches the containers' mounts to the hint by
// that path. The spec in bundle is rewritten when a source was added. Errors name the
// annotation and its value; hints already complete, and specs without hints, are left
// alone.
//
// The UID and the volume name come from the pod, so they are checked (a UUID, a DNS-1123
// label) and only ever joined into paths: used as patterns, "*" or "[a-z]" matched other
// pods' volumes.
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
	sort.Strings(volumes)
	uid, ok := spec.Annotations[oci.SandboxUIDAnnotation]
	if !ok || uid == "" {
		return fmt.Errorf("mount hints for volumes %v have no source, and the sandbox has no %s annotation to find them by", volumes, oci.SandboxUIDAnnotation)
	}
	if !oci.IsPodUID(uid) {
		return fmt.Errorf("annotation %s=%s: not a pod UID (a UUID); the sources of mount hints %v are not filled", oci.SandboxUIDAnnotation, quoteValue(uid), volumes)
	}
	sources := map[string]string{}
	for _, name := range volumes {
		dir, err := volumeDir(podsDir, uid, name)
		if err != nil {
			return fmt.Errorf("annotation %s: %w", quoteValue(mountHintPrefix+name+".type"), err)
		}
		sources[name] = dir
	}
	// All or nothing: the spec in memory stays the one in the bundle.
	for name, dir := range sources {
		spec.Annotations[mountHintPrefix+name+".source"] = dir
		log.G(ctx).Debugf("mount hint %s: source %s", name, dir)
	}
	return oci.WriteSpec(bundle, spec)
}

// volumeDir returns <podsDir>/<uid>/volumes/<plugin>/<name>, the one plugin directory
// holding a real directory (not a symlink) called name. uid must be checked already;
// name must be a DNS-1123 label. Errors quote name and say what was found.
func volumeDir(podsDir, uid, name string) (string, error) {
	if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
		return "", fmt.Errorf("volume name %s is not a DNS-1123 label: %s", quoteValue(name), errs[0])
	}
	volumes := filepath.Join(podsDir, uid, "volumes")
	plugins, err := os.ReadDir(volumes)
	if err != nil {
		return "", fmt.Errorf("volume %s: list volume plugins of pod %s: %w", name, uid, err)
	}
	var found, in []string
	for _, p := range plugins {
		if !p.IsDir() { // a symlinked plugin directory is not a directory entry here
			continue
		}
		dir := filepath.Join(volumes, p.Name(), name)
		fi, err := os.Lstat(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			return "", fmt.Errorf("volume %s: %w", name, err)
		case fi.IsDir():
			found, in = append(found, dir), append(in, p.Name())
		}
	}
	if len(found) != 1 {
		return "", fmt.Errorf("volume %s: want one directory %s, found %d (plugins %v)",
			name, filepath.Join(volumes, "<plugin>", name), len(found), in)
	}
	return found[0], nil
}

// quoteValue quotes an annotation's value for an error, cut to maxQuoted bytes.
func quoteValue(v string) string {
	if len(v) > maxQuoted {
		return fmt.Sprintf("%q... (%d bytes)", v[:maxQuoted], len(v))
	}
	return fmt.Sprintf("%q", v)
}
