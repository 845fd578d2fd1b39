package compat

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// RunscIdentity names the runsc build at binary (a path, or a name looked up in $PATH)
// for Tuple.RunscVersion: the line version returns and, when the build carries no version
// (it contains VERSION_MISSING, as `go build` leaves it), "+sha256:" and the first 8
// bytes of the binary's sha256 in hex, so that two different builds never pass for one
// another.
//
// Hashing a 100 MB binary costs more than half a second and every pod has a shim of its
// own, so the result is kept in cacheFile ("<stamp>\n<identity>"), keyed by the binary's
// path, inode, size and modification time, and reused while they stay the same. The
// cache is best effort and written atomically (a temporary file renamed into place): a
// missing or unwritable one only costs time. Errors: binary not found or unreadable
// (named), or version's error as it is.
func RunscIdentity(ctx context.Context, binary string, version func(context.Context) (string, error), cacheFile string) (string, error) {
	path, err := exec.LookPath(binary)
	if err != nil {
		return "", fmt.Errorf("runsc binary %s: %w", binary, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("runsc binary: %w", err)
	}
	stamp := fmt.Sprintf("%s ino=%d size=%d mtime=%d", path, inode(fi), fi.Size(), fi.ModTime().UnixNano())
	if data, err := os.ReadFile(cacheFile); err == nil {
		if cachedStamp, identity, ok := strings.Cut(string(data), "\n"); ok && cachedStamp == stamp && identity != "" {
			return identity, nil
		}
	}
	identity, err := version(ctx)
	if err != nil {
		return "", err
	}
	if strings.Contains(identity, "VERSION_MISSING") {
		sum, err := fileSHA256(path)
		if err != nil {
			return "", err
		}
		identity = fmt.Sprintf("%s+sha256:%x", identity, sum[:8])
	}
	if err := os.MkdirAll(filepath.Dir(cacheFile), 0o700); err == nil {
		tmp := fmt.Sprintf("%s.%d", cacheFile, os.Getpid())
		if os.WriteFile(tmp, []byte(stamp+"\n"+identity), 0o600) == nil {
			_ = os.Rename(tmp, cacheFile)
		}
	}
	return identity, nil
}

// fileSHA256 is the sha256 of the file at path; errors name it.
func fileSHA256(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("runsc binary: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("runsc binary %s: %w", path, err)
	}
	return h.Sum(nil), nil
}

// inode is fi's inode number, 0 where the platform does not say.
func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
