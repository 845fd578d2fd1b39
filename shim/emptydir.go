package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/podsnapshot/podsnapshot/runtime/oci"
)

// A whole-pod snapshot holds what GKE's holds: the pod's memory, its root file systems and
// its emptyDir volumes. A plain emptyDir is a host directory that runsc's gofer serves, so
// its files are outside the sandbox and a checkpoint would not save them. For a pod a
// whole-pod policy matches, the shim therefore gives each of the pod's emptyDirs the mount
// hints that gVisor's own shim gives them on GKE (gvisor pkg/shim/v1/utils/volumes.go):
// type tmpfs, share pod, the volume's host directory as source. runsc then mounts one
// tmpfs inside the sandbox for the volume, shared by every container of the pod that
// mounts it, whose pages are backed by a file runsc creates in that host directory
// (".gvisor.filestore.<sandbox id>", runsc/boot/vfs.go). Being sandbox memory, the files
// are saved by a checkpoint and loaded by a restore with the rest of it. What it costs is
// in docs/architecture.md ("emptyDir inside the sandbox").
const (
	// emptyDirPlugin is the directory kubelet keeps a pod's emptyDir volumes in, below
	// <kubelet_pods_dir>/<pod uid>/volumes/.
	emptyDirPlugin = "kubernetes.io~empty-dir"
	// filestorePrefix names the file runsc backs a self-backed mount with; a directory that
	// holds only such a file is as empty as kubelet made it.
	filestorePrefix = ".gvisor.filestore."
	// forceSharedPrefix is gVisor's per-volume opt-out (dev.gvisor.empty-dir.<volume>.
	// force-shared: "true"): the volume stays a host directory that host processes see.
	forceSharedPrefix = oci.EmptyDirPrefix
)

// keepEmptyDirs adds gVisor mount hints (source, type tmpfs, share pod) to the sandbox's
// spec for each emptyDir volume of the pod, found in
// <podsDir>/<sandbox uid>/volumes/kubernetes.io~empty-dir/<volume>, and rewrites the
// bundle's config.json; it returns the volumes it moved into the sandbox, sorted. A volume
// is left a host directory when the pod's own annotations already give it a hint (by name
// or by source: the user's hints win), when it is opted out with
// dev.gvisor.empty-dir.<volume>.force-shared, or when its directory is not empty (a
// sandbox made again for a running pod: the files the earlier sandbox left stay visible,
// as gVisor's shim does). A pod without emptyDirs, or without a kubelet directory (a pod
// run without Kubernetes), is left alone. Errors name the annotation or directory; on an
// error the spec is unchanged.
func keepEmptyDirs(ctx context.Context, bundle string, spec *specs.Spec, podsDir string) ([]string, error) {
	uid := spec.Annotations[oci.SandboxUIDAnnotation]
	if uid == "" {
		return nil, nil // not a Kubernetes pod
	}
	if !oci.IsPodUID(uid) {
		return nil, fmt.Errorf("annotation %s=%s: not a pod UID (a UUID)", oci.SandboxUIDAnnotation, quoteValue(uid))
	}
	dir := filepath.Join(podsDir, uid, "volumes", emptyDirPlugin)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list the pod's emptyDir volumes: %w", err)
	}
	hinted := map[string]bool{} // volume names and sources the pod's own hints use
	for k, v := range spec.Annotations {
		if rest, ok := strings.CutPrefix(k, mountHintPrefix); ok {
			name, _, _ := strings.Cut(rest, ".")
			hinted[name] = true
			if strings.HasSuffix(k, ".source") {
				hinted[v] = true
			}
		}
	}
	var moved []string
	for _, e := range entries {
		name, path := e.Name(), filepath.Join(dir, e.Name())
		switch {
		case !e.IsDir() || len(validation.IsDNS1123Label(name)) > 0:
			continue // not a volume kubelet made
		case hinted[name] || hinted[path]:
			log.G(ctx).Debugf("emptyDir %s: the pod's own mount hints apply", name)
			continue
		case forceShared(ctx, spec, name):
			continue
		}
		empty, err := emptyDirEmpty(path)
		if err != nil {
			return nil, err
		}
		if !empty {
			log.G(ctx).Infof("emptyDir %s already holds files: left a host directory, outside snapshots", name)
			continue
		}
		moved = append(moved, name)
	}
	if len(moved) == 0 {
		return nil, nil
	}
	sort.Strings(moved)
	// The hints go on a copy: the spec in memory stays the bundle's if the write fails.
	ann := maps.Clone(spec.Annotations)
	for _, name := range moved {
		path := filepath.Join(dir, name)
		ann[mountHintPrefix+name+".source"] = path
		ann[mountHintPrefix+name+".type"] = "tmpfs"
		ann[mountHintPrefix+name+".share"] = "pod"
		if size := memoryMediumSize(path); size > 0 {
			ann[mountHintPrefix+name+".options"] = "size=" + strconv.FormatInt(size, 10)
		}
	}
	old := spec.Annotations
	spec.Annotations = ann
	if err := oci.WriteSpec(bundle, spec); err != nil {
		spec.Annotations = old
		return nil, err
	}
	return moved, nil
}

// memoryMediumSize returns the size in bytes of the tmpfs kubelet mounted for an emptyDir
// of medium Memory (its sizeLimit, or what kubelet chose without one), 0 for a directory
// on the node's disk (medium ""). The tmpfs inside the sandbox gets the same size, so a
// write past sizeLimit fails with ENOSPC inside the pod as it does under runc; a disk
// emptyDir's sizeLimit is held by kubelet's eviction, which measures the directory, and
// that directory holds the sandbox's filestore of the volume.
//
// The directory must be a mount point of its own: on a node whose /var/lib/kubelet is
// itself a tmpfs, a disk emptyDir is a plain directory of that tmpfs, not a volume sized
// for the pod.
func memoryMediumSize(dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		return 0
	}
	var self, parent unix.Stat_t
	if unix.Stat(dir, &self) != nil || unix.Stat(filepath.Dir(dir), &parent) != nil || self.Dev == parent.Dev {
		return 0
	}
	return int64(st.Blocks) * st.Bsize
}

// forceShared reports gVisor's opt-out annotation for volume name; a value that is not a
// boolean is logged and ignored, as gVisor's shim does.
func forceShared(ctx context.Context, spec *specs.Spec, name string) bool {
	key := forceSharedPrefix + name + ".force-shared"
	v, ok := spec.Annotations[key]
	if !ok {
		return false
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		log.G(ctx).Warnf("ignoring annotation %s=%s: not a boolean", key, quoteValue(v))
		return false
	}
	return b
}

// emptyDirEmpty reports whether dir holds nothing but runsc filestore files.
func emptyDirEmpty(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, fmt.Errorf("emptyDir %s: %w", dir, err)
	}
	defer f.Close()
	for {
		names, err := f.Readdirnames(16)
		for _, n := range names {
			if !strings.HasPrefix(n, filestorePrefix) {
				return false, nil
			}
		}
		if err == io.EOF {
			return true, nil
		}
		if err != nil {
			return false, fmt.Errorf("emptyDir %s: %w", dir, err)
		}
	}
}

// warnSubPaths logs, for a container of a pod whose emptyDirs went inside the sandbox,
// each mount of a subPath of such a volume. kubelet mounts a subPath from
// <kubelet_pods_dir>/<uid>/volume-subpaths/<volume>/<container>/<n>, a host directory that
// runsc cannot match to the volume's hint (gVisor matches hints by exact source; its own
// shim has the same limit): the container sees the node's directory, not the files the
// pod's other containers see in the volume, and those files are not saved. The pod can opt
// the volume out with dev.gvisor.empty-dir.<volume>.force-shared: "true".
func warnSubPaths(ctx context.Context, sandbox, spec *specs.Spec, podsDir, id string) {
	uid := sandbox.Annotations[oci.SandboxUIDAnnotation]
	if uid == "" {
		return
	}
	subpaths := filepath.Join(podsDir, uid, "volume-subpaths") + "/"
	for _, m := range spec.Mounts {
		rest, ok := strings.CutPrefix(m.Source, subpaths)
		if !ok {
			continue
		}
		volume, _, _ := strings.Cut(rest, "/")
		src := sandbox.Annotations[mountHintPrefix+volume+".source"]
		if filepath.Base(filepath.Dir(src)) != emptyDirPlugin || sandbox.Annotations[mountHintPrefix+volume+".type"] != "tmpfs" {
			continue
		}
		log.G(ctx).WithField("id", id).Warnf("container mounts a subPath of emptyDir %s at %s: the volume is inside the sandbox, the subPath is the node's directory; its files are not the volume's and are not saved (annotate the pod with %s%s.force-shared: \"true\" to keep the volume on the node)",
			volume, m.Destination, forceSharedPrefix, volume)
	}
}
