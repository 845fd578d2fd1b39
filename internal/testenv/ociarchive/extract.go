package ociarchive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ExtractRootfs unpacks the layers of the single image in archive (as Build writes it)
// into dir, for running the image without containerd, e.g. as an OCI bundle for runsc.
// Only directories, regular files and symbolic links are supported; ownership is left to
// the caller (files belong to whoever extracts).
func ExtractRootfs(archive, dir string) error {
	blobs, index, err := readLayout(archive)
	if err != nil {
		return err
	}
	var idx imageIndex
	if err := json.Unmarshal(index, &idx); err != nil {
		return fmt.Errorf("%s: index.json: %w", archive, err)
	}
	if len(idx.Manifests) != 1 {
		return fmt.Errorf("%s: index.json lists %d manifests, want 1", archive, len(idx.Manifests))
	}
	var m imageManifest
	if err := json.Unmarshal(blobs[idx.Manifests[0].Digest], &m); err != nil {
		return fmt.Errorf("%s: manifest %s: %w", archive, idx.Manifests[0].Digest, err)
	}
	for _, l := range m.Layers {
		b, ok := blobs[l.Digest]
		if !ok {
			return fmt.Errorf("%s: layer %s missing", archive, l.Digest)
		}
		var r io.Reader = bytes.NewReader(b)
		if l.MediaType == MediaTypeLayerGzip {
			zr, err := gzip.NewReader(r)
			if err != nil {
				return fmt.Errorf("%s: layer %s: %w", archive, l.Digest, err)
			}
			r = zr
		}
		if err := untar(r, dir); err != nil {
			return fmt.Errorf("%s: layer %s: %w", archive, l.Digest, err)
		}
	}
	return nil
}

// readLayout returns the blobs of an OCI archive by digest, and its index.json.
func readLayout(archive string) (map[string][]byte, []byte, error) {
	f, err := os.Open(archive)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	blobs := map[string][]byte{}
	var index []byte
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read %s: %w", archive, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, nil, fmt.Errorf("read %s: %s: %w", archive, hdr.Name, err)
		}
		switch {
		case hdr.Name == "index.json":
			index = b
		case strings.HasPrefix(hdr.Name, "blobs/sha256/"):
			blobs["sha256:"+strings.TrimPrefix(hdr.Name, "blobs/sha256/")] = b
		}
	}
	if index == nil {
		return nil, nil, fmt.Errorf("%s: no index.json: not an OCI archive", archive)
	}
	return blobs, index, nil
}

func untar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(hdr.Name)
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("entry %q escapes the root", hdr.Name)
		}
		p := filepath.Join(dir, name)
		mode := os.FileMode(hdr.Mode).Perm()
		if hdr.Mode&0o1000 != 0 {
			mode |= os.ModeSticky
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
			// Chmod, not the umask-filtered MkdirAll mode: /tmp must stay 1777.
			if err := os.Chmod(p, mode|os.ModeDir); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if err := os.Chmod(p, mode); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			if err := os.Symlink(hdr.Linkname, p); err != nil {
				return err
			}
		default:
			return fmt.Errorf("entry %q: unsupported type %c", hdr.Name, hdr.Typeflag)
		}
	}
}
