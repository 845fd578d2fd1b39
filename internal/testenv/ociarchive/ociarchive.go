// Package ociarchive builds OCI image archives (the tar form of an OCI image layout)
// from files on the host, for tests that have no registry: the archive is loaded with
// `ctr images import`.
//
// An image has exactly one layer. Every timestamp is fixed and entries are sorted, so the
// same inputs always give the same digests; tests can then rely on an image digest being
// stable across runs (the snapshot key includes it).
package ociarchive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Media types and annotations of the OCI image spec and containerd.
const (
	MediaTypeIndex     = "application/vnd.oci.image.index.v1+json"
	MediaTypeManifest  = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig    = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer     = "application/vnd.oci.image.layer.v1.tar"
	MediaTypeLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip"

	// AnnotationRefName is the OCI annotation naming a manifest in index.json; by
	// convention (and as containerd's own export writes it) it holds the tag only.
	AnnotationRefName = "org.opencontainers.image.ref.name"
	// AnnotationImageName is containerd's annotation with the full image name; `ctr
	// images import` uses it as the image's name.
	AnnotationImageName = "io.containerd.image.name"
)

// Epoch is the modification time of every file and the image's creation time: a fixed
// value keeps digests reproducible.
var Epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// File is one entry of the image's root filesystem.
type File struct {
	// Path is the absolute path in the image, such as /bin/sh.
	Path string
	// Mode holds the permission bits, plus fs.ModeDir for a directory or fs.ModeSymlink
	// for a symbolic link. Zero means 0755 for directories and executables, 0644 else.
	Mode fs.FileMode
	// Data is the content of a regular file when Source is empty.
	Data []byte
	// Source is a host file whose content is copied (its permission bits are used when
	// Mode has none).
	Source string
	// Target is the target of a symbolic link.
	Target string
}

// Spec describes an image.
type Spec struct {
	// Name is the full reference, such as podsnapshot.test/busybox:latest. A name
	// without a tag gets ":latest".
	Name string
	// Files make up the single layer. Parent directories are added as needed. When two
	// entries have the same path, the later one wins, so presets can be extended.
	Files []File
	// Image configuration (the OCI config's "config" object).
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	User       string
	Labels     map[string]string
	// Architecture and OS of the image; empty means the host's (runtime.GOARCH) and linux.
	Architecture string
	OS           string
	// Uncompressed stores the layer as a plain tar instead of gzip.
	Uncompressed bool
}

// Result names what Build wrote.
type Result struct {
	// Name is the normalised image name (with a tag).
	Name string
	// ManifestDigest is the image's digest as containerd reports it ("sha256:...").
	ManifestDigest string
	ConfigDigest   string
	LayerDigest    string
	// DiffID is the digest of the uncompressed layer.
	DiffID string
}

// NormalizeName returns name with ":latest" appended when it has no tag, and the tag.
func NormalizeName(name string) (full, tag string, err error) {
	if name == "" {
		return "", "", errors.New("image name is empty")
	}
	if strings.Contains(name, "@") {
		return "", "", fmt.Errorf("image name %q: digests are not supported, use a tag", name)
	}
	slash := strings.LastIndex(name, "/")
	if colon := strings.LastIndex(name, ":"); colon > slash {
		if colon == len(name)-1 {
			return "", "", fmt.Errorf("image name %q: empty tag", name)
		}
		return name, name[colon+1:], nil
	}
	return name + ":latest", "latest", nil
}

// BuildFile writes the archive of spec to path. It writes a temporary file first and
// renames it, so a reader never sees a half-written archive.
func BuildFile(path string, spec Spec) (Result, error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".ociarchive-*")
	if err != nil {
		return Result{}, fmt.Errorf("create archive in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	res, err := Build(tmp, spec)
	if err != nil {
		tmp.Close()
		return Result{}, err
	}
	// CreateTemp makes the file 0600; an archive is no secret and other users' tools
	// (ctr run by another user) may need to read it.
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return Result{}, fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return Result{}, fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return Result{}, fmt.Errorf("rename archive to %s: %w", path, err)
	}
	return res, nil
}

// Build writes the OCI archive of spec to w.
func Build(w io.Writer, spec Spec) (Result, error) {
	name, tag, err := NormalizeName(spec.Name)
	if err != nil {
		return Result{}, err
	}
	arch, osName := spec.Architecture, spec.OS
	if arch == "" {
		arch = runtime.GOARCH
	}
	if osName == "" {
		osName = "linux"
	}

	layerTar, err := buildLayer(spec.Files)
	if err != nil {
		return Result{}, err
	}
	diffID := digest(layerTar)
	// Each digest of the layer is computed once: it can be gigabytes (TorchImage).
	layer, layerType, layerDigest := layerTar, MediaTypeLayer, diffID
	if !spec.Uncompressed {
		if layer, err = gzipBytes(layerTar); err != nil {
			return Result{}, err
		}
		layerType, layerDigest = MediaTypeLayerGzip, digest(layer)
	}

	config := imageConfig{
		Created:      Epoch.Format(time.RFC3339),
		Architecture: arch,
		OS:           osName,
		Config: containerConfig{
			Entrypoint: spec.Entrypoint,
			Cmd:        spec.Cmd,
			Env:        spec.Env,
			WorkingDir: spec.WorkingDir,
			User:       spec.User,
			Labels:     spec.Labels,
		},
		RootFS:  rootFS{Type: "layers", DiffIDs: []string{diffID}},
		History: []history{{Created: Epoch.Format(time.RFC3339), CreatedBy: "podsnapshot internal/testenv/imagebuild"}},
	}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return Result{}, fmt.Errorf("encode image config: %w", err)
	}
	manifest := imageManifest{
		SchemaVersion: 2,
		MediaType:     MediaTypeManifest,
		Config:        descriptor{MediaType: MediaTypeConfig, Digest: digest(configJSON), Size: int64(len(configJSON))},
		Layers:        []descriptor{{MediaType: layerType, Digest: layerDigest, Size: int64(len(layer))}},
	}
	manifestJSON, err := json.Marshal(manifest)
	if err != nil {
		return Result{}, fmt.Errorf("encode image manifest: %w", err)
	}
	index := imageIndex{
		SchemaVersion: 2,
		MediaType:     MediaTypeIndex,
		Manifests: []descriptor{{
			MediaType: MediaTypeManifest,
			Digest:    digest(manifestJSON),
			Size:      int64(len(manifestJSON)),
			// The platform lets `ctr images import` (which keeps only the host's
			// platform unless --all-platforms) select this manifest.
			Platform:    &platform{Architecture: arch, OS: osName},
			Annotations: map[string]string{AnnotationRefName: tag, AnnotationImageName: name},
		}},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return Result{}, fmt.Errorf("encode image index: %w", err)
	}

	tw := tar.NewWriter(w)
	entries := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", indexJSON},
		{"blobs/", nil},
		{"blobs/sha256/", nil},
	}
	for _, blob := range []struct {
		digest string
		data   []byte
	}{{digest(configJSON), configJSON}, {layerDigest, layer}, {digest(manifestJSON), manifestJSON}} {
		entries = append(entries, struct {
			name string
			data []byte
		}{"blobs/sha256/" + strings.TrimPrefix(blob.digest, "sha256:"), blob.data})
	}
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: Epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if strings.HasSuffix(e.name, "/") {
			hdr.Mode, hdr.Typeflag = 0o755, tar.TypeDir
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return Result{}, fmt.Errorf("write archive entry %s: %w", e.name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return Result{}, fmt.Errorf("write archive entry %s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return Result{}, fmt.Errorf("finish archive: %w", err)
	}
	return Result{
		Name:           name,
		ManifestDigest: digest(manifestJSON),
		ConfigDigest:   digest(configJSON),
		LayerDigest:    layerDigest,
		DiffID:         diffID,
	}, nil
}

// buildLayer returns the layer tar of files: parents first, sorted, owned by root.
func buildLayer(files []File) ([]byte, error) {
	byPath := map[string]File{}
	for _, f := range files {
		if !path.IsAbs(f.Path) {
			return nil, fmt.Errorf("image file %q: path must be absolute", f.Path)
		}
		p := path.Clean(f.Path)
		if p == "/" {
			continue
		}
		f.Path = p
		byPath[p] = f
		// Parent directories that were not listed get the usual 0755.
		for dir := path.Dir(p); dir != "/"; dir = path.Dir(dir) {
			if _, ok := byPath[dir]; !ok {
				byPath[dir] = File{Path: dir, Mode: fs.ModeDir | 0o755}
			}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	var buf bytes.Buffer
	// One allocation of about the final size instead of the doublings of a growing
	// buffer, each of which clears and copies it: they took most of the build of a
	// 1.6 GB layer (TorchImage).
	buf.Grow(layerSizeHint(byPath))
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		f := byPath[p]
		if dir, ok := byPath[path.Dir(p)]; ok && !dir.Mode.IsDir() {
			return nil, fmt.Errorf("image file %s: parent %s is not a directory", p, dir.Path)
		}
		hdr := &tar.Header{
			Name:    strings.TrimPrefix(p, "/"),
			ModTime: Epoch,
			Format:  tar.FormatPAX,
			Uname:   "root",
			Gname:   "root",
		}
		var data []byte
		perm := f.Mode.Perm()
		switch {
		case f.Mode.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, hdr.Name+"/"
			if perm == 0 {
				perm = 0o755
			}
		case f.Mode&fs.ModeSymlink != 0:
			if f.Target == "" {
				return nil, fmt.Errorf("image file %s: symbolic link without a target", p)
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, f.Target
			perm = 0o777
		default:
			hdr.Typeflag = tar.TypeReg
			data = f.Data
			if f.Source != "" {
				var err error
				if data, err = os.ReadFile(f.Source); err != nil {
					return nil, fmt.Errorf("image file %s: %w", p, err)
				}
				if perm == 0 {
					if st, err := os.Stat(f.Source); err == nil {
						perm = st.Mode().Perm()
					}
				}
			}
			if perm == 0 {
				perm = 0o644
			}
			hdr.Size = int64(len(data))
		}
		// Keep the sticky bit: a world-writable /tmp needs it.
		hdr.Mode = int64(perm)
		if f.Mode&fs.ModeSticky != 0 {
			hdr.Mode |= 0o1000
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("image file %s: %w", p, err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("image file %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("finish layer: %w", err)
	}
	return buf.Bytes(), nil
}

// layerSizeHint estimates the size of the layer tar of files: their contents plus a
// header block and padding each (PAX records for long names may add a few blocks).
func layerSizeHint(files map[string]File) int {
	n := 2 * 512 // the end-of-archive blocks
	for _, f := range files {
		size := int64(len(f.Data))
		if f.Source != "" && f.Mode&(fs.ModeDir|fs.ModeSymlink) == 0 {
			if st, err := os.Stat(f.Source); err == nil {
				size = st.Size()
			}
		}
		n += 2*512 + int(size+511)/512*512
	}
	return n
}

// gzipBytes compresses b. The gzip header carries no name and no time, so the result
// is reproducible.
func gzipBytes(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, fmt.Errorf("compress layer: %w", err)
	}
	if _, err := zw.Write(b); err != nil {
		return nil, fmt.Errorf("compress layer: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("compress layer: %w", err)
	}
	return buf.Bytes(), nil
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// The JSON documents, reduced to the fields this package writes. Field names follow the
// OCI image spec.
type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type imageIndex struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

type imageManifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

type imageConfig struct {
	Created      string          `json:"created"`
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Config       containerConfig `json:"config"`
	RootFS       rootFS          `json:"rootfs"`
	History      []history       `json:"history"`
}

type containerConfig struct {
	User       string            `json:"User,omitempty"`
	Env        []string          `json:"Env,omitempty"`
	Entrypoint []string          `json:"Entrypoint,omitempty"`
	Cmd        []string          `json:"Cmd,omitempty"`
	WorkingDir string            `json:"WorkingDir,omitempty"`
	Labels     map[string]string `json:"Labels,omitempty"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type history struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}
