package nodeinstall

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// fileSum returns the sha256 of the file at path; exists is false (and err nil) when
// there is no file. Errors do not name path: callers say which file it is.
func fileSum(path string) (sum [sha256.Size]byte, exists bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return sum, false, nil
	}
	if err != nil {
		return sum, false, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, true, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, true, nil
}

// readIfExists returns the content of path, or nil and exists false when it is absent.
func readIfExists(path string) (data []byte, exists bool, err error) {
	data, err = os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return data, true, nil
}

// writeAtomic puts the bytes read from src at path with mode perm: a temporary file in
// path's directory (created with its parents, 0755), synced, chmod'ed and renamed over
// path, then the directory synced. The old file at path is never written: a process
// that has it open or mapped (a running shim, runsc) keeps reading its old inode, and a
// crash leaves either the old or the new file, never half of one.
func writeAtomic(path string, src io.Reader, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	_, err = io.Copy(tmp, src)
	if err == nil {
		err = tmp.Sync()
	}
	if err == nil {
		// Chmod, not CreateTemp's 0600 through the umask: the mode asked for, exactly.
		err = tmp.Chmod(perm)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

// writeFileAtomic is writeAtomic of data.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	return writeAtomic(path, bytes.NewReader(data), perm)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// fileState says what a step found at its target and did.
type fileState string

const (
	stateUnchanged fileState = "unchanged" // same sha256: not written
	stateInstalled fileState = "installed" // there was none
	stateUpdated   fileState = "updated"   // it differed: replaced by a new inode
)

// installBinary copies src to dst (mode 0755) unless dst has the same sha256 already.
func installBinary(src, dst string) (fileState, error) {
	want, ok, err := fileSum(src)
	if err == nil && !ok {
		err = fs.ErrNotExist
	}
	if err != nil {
		return "", fmt.Errorf("source binary %s: %w", src, err)
	}
	have, exists, err := fileSum(dst)
	if err != nil {
		return "", fmt.Errorf("installed binary %s: %w", dst, err)
	}
	if exists && have == want {
		return stateUnchanged, nil
	}
	f, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("source binary %s: %w", src, err)
	}
	defer f.Close()
	if err := writeAtomic(dst, f, 0o755); err != nil {
		return "", fmt.Errorf("install %s as %s: %w", src, dst, err)
	}
	if exists {
		return stateUpdated, nil
	}
	return stateInstalled, nil
}

// removeIfSame removes path when its content is want's (want read from wantPath when
// want is nil). It reports removed false, without error, when path is absent or differs;
// differs tells the two apart.
func removeIfSame(path string, want []byte, wantPath string) (removed, differs bool, err error) {
	have, exists, err := fileSum(path)
	if err != nil || !exists {
		return false, false, err
	}
	var sum [sha256.Size]byte
	if want != nil {
		sum = sha256.Sum256(want)
	} else {
		var ok bool
		if sum, ok, err = fileSum(wantPath); err != nil {
			return false, false, err
		} else if !ok {
			// Nothing to compare with: not known to be ours.
			return false, true, nil
		}
	}
	if have != sum {
		return false, true, nil
	}
	if err := os.Remove(path); err != nil {
		return false, false, err
	}
	return true, false, syncDir(filepath.Dir(path))
}
