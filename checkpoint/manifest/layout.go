package manifest

import (
	"fmt"
	"strings"

	"github.com/podsnapshot/podsnapshot/storage"
)

// File names of a snapshot, relative to its directory. The manifest is written last: a
// directory without it is not a snapshot.
const (
	ManifestFile   = "manifest.json"
	CheckpointFile = "checkpoint.img.zst"
	PagesMetaFile  = "pages_meta.img.zst"
	PagesFile      = "pages.img.zst"
	// HotFramesFile is the snapshot's hot-frame list (checkpoint/stream, hotlist.go): the
	// frames of its pages file a restored sandbox read first, written once by the first
	// streaming restore that recorded them, after the manifest. It is no file of the
	// manifest: deleting the snapshot's directory (repo.Delete lists it) removes it.
	HotFramesFile = "hot-frames.json"
)

// Root file system layers of a rootfs-only snapshot: one tar archive per container,
// "rootfs-<container name>.tar.zst" (`runsc tar rootfs-upper`: the container's rootfs
// overlay upper layer, deletions as overlayfs whiteouts, character devices 0/0).
const (
	rootfsPrefix = "rootfs-"
	rootfsSuffix = ".tar.zst"
)

// RootfsFile is the file name of container's root file system layer, zstd-compressed.
func RootfsFile(container string) string { return rootfsPrefix + container + rootfsSuffix }

// RootfsContainer returns the container whose layer file (a name relative to a
// snapshot's directory, with ".zst" or without) holds, and whether file is a layer file.
func RootfsContainer(file string) (string, bool) {
	name, ok := strings.CutPrefix(file, rootfsPrefix)
	if !ok {
		return "", false
	}
	if n, ok := strings.CutSuffix(name, rootfsSuffix); ok {
		name = n
	} else if n, ok := strings.CutSuffix(name, strings.TrimSuffix(rootfsSuffix, ".zst")); ok {
		name = n
	} else {
		return "", false
	}
	if name == "" || strings.ContainsAny(name, "/") {
		return "", false
	}
	return name, true
}

// IsImageFile reports whether file, a name relative to a snapshot's directory, is one of
// the image files a snapshot may list: CheckpointFile, PagesMetaFile or PagesFile, with
// ".zst" (zstd) or without (stored uncompressed), or a root file system layer
// (RootfsFile).
func IsImageFile(file string) bool {
	for _, f := range []string{CheckpointFile, PagesMetaFile, PagesFile} {
		if file == f || file == strings.TrimSuffix(f, ".zst") {
			return true
		}
	}
	_, ok := RootfsContainer(file)
	return ok
}

// PolicyPrefix is the object-name prefix of one policy's snapshots: "<namespace>/<policy>/".
func PolicyPrefix(namespace, policy string) string {
	return namespace + "/" + policy + "/"
}

// Dir is a snapshot's directory relative to the store root: "<namespace>/<policy>/<uuid>".
func Dir(namespace, policy, uuid string) string {
	return namespace + "/" + policy + "/" + uuid
}

// ObjectName is a snapshot file's object name: "<namespace>/<policy>/<uuid>/<file>".
func ObjectName(namespace, policy, uuid, file string) string {
	return Dir(namespace, policy, uuid) + "/" + file
}

// ManifestName is the object name of a snapshot's manifest.
func ManifestName(namespace, policy, uuid string) string {
	return ObjectName(namespace, policy, uuid, ManifestFile)
}

// Location is a parsed object name.
type Location struct {
	Namespace, Policy, UUID string
	// File is the rest after the UUID, e.g. "pages.img.zst".
	File string
}

// ParseName splits "<namespace>/<policy>/<uuid>/<file>" into its parts. It fails for a
// name storage.CheckName rejects, one with fewer than four elements, or one whose third
// element is not a UUID.
func ParseName(name string) (Location, error) {
	if err := storage.CheckName(name); err != nil {
		return Location{}, err
	}
	parts := strings.SplitN(name, "/", 4)
	if len(parts) != 4 {
		return Location{}, fmt.Errorf("object name %q: want <namespace>/<policy>/<uuid>/<file>", name)
	}
	if !IsUUID(parts[2]) {
		return Location{}, fmt.Errorf("object name %q: %q is not a UUID", name, parts[2])
	}
	return Location{Namespace: parts[0], Policy: parts[1], UUID: parts[2], File: parts[3]}, nil
}
