package local

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/podsnapshot/podsnapshot/storage"
)

// Adopt makes the file at path the object name without copying a byte
// (storage.Adopter): a hard link is made under a temporary name beneath the root, the
// file is fsynced and its CRC32C (crc, computed by the caller) recorded, and the link is
// renamed into place, replacing any object. path must be a regular file on the store's
// filesystem; on another the error wraps storage.ErrCrossDevice and nothing changed. The
// caller must not write the file afterwards: it is the object now.
func (s *Store) Adopt(ctx context.Context, name, path string, crc uint32) (info storage.ObjectInfo, err error) {
	if err := s.check(name); err != nil {
		return info, err
	}
	url := s.URL(name)
	src, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return info, fmt.Errorf("%s: adopt %s: %w", url, path, err)
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return info, fmt.Errorf("%s: adopt %s: %w", url, path, ErrNotRegular)
	}
	rootfd, err := s.openRoot()
	if err != nil {
		return info, s.pathErr(name, err)
	}
	defer unix.Close(rootfd)
	dir, base := split(name)
	dirfd, err := mkdirBeneath(rootfd, dir)
	if err != nil {
		return info, fmt.Errorf("%s: %w", url, s.unwrapErr(name, err))
	}
	defer unix.Close(dirfd)
	if len(base) > 64 {
		base = base[:64]
	}
	tmp := storage.TempPrefix + "-" + base + "-" + strconv.FormatUint(uint64(rand.Uint32()), 10)
	if err := unix.Linkat(unix.AT_FDCWD, path, dirfd, tmp, 0); err != nil {
		if err == unix.EXDEV {
			return info, fmt.Errorf("%s: adopt %s: %w", url, path, storage.ErrCrossDevice)
		}
		return info, fmt.Errorf("%s: adopt %s: %w", url, path, err)
	}
	defer func() {
		if err != nil {
			unix.Unlinkat(dirfd, tmp, 0)
		}
	}()
	// The path may have been swapped between the open and the link.
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, tmp, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return info, fmt.Errorf("%s: %w", url, err)
	}
	var sst unix.Stat_t
	if err := unix.Fstat(int(src.Fd()), &sst); err != nil || sst.Ino != st.Ino || sst.Dev != st.Dev {
		return info, fmt.Errorf("%s: adopt %s: %w (the file changed while linked)", url, path, ErrNotRegular)
	}
	if err := src.Sync(); err != nil {
		return info, fmt.Errorf("%s: fsync: %w", url, err)
	}
	setCRC(src, crc)
	if err := ctx.Err(); err != nil {
		return info, fmt.Errorf("%s: %w", url, err)
	}
	if err := unix.Renameat(dirfd, tmp, dirfd, base); err != nil {
		return info, fmt.Errorf("%s: rename into place: %w", url, err)
	}
	if err := unix.Fsync(dirfd); err != nil {
		return info, fmt.Errorf("%s: fsync directory: %w", url, err)
	}
	return storage.ObjectInfo{Name: name, Size: fi.Size(), Updated: fi.ModTime(), CRC32C: crc, HasCRC32C: true}, nil
}
