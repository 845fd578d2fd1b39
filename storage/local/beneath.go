package local

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Every object name is resolved beneath the store's root without following a symbolic
// link: a link planted in the store (by whoever can write to it) must not make a Get read,
// a Put write, a Link hand out or a Delete remove anything outside the root, nor make the
// node cache hold a link that runsc would resolve again later. openat2 with
// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS does this in one call where the kernel has it
// (Linux 5.6); elsewhere each path element is opened from the root's fd with O_NOFOLLOW.

// ErrSymlink is returned, wrapped with the object's URL, for a name whose path in the
// store holds a symbolic link.
var ErrSymlink = errors.New("a symbolic link in its path; the store follows none")

// ErrNotRegular is returned, wrapped with the object's URL, for a name that is a FIFO, a
// device, a socket or a directory rather than a regular file.
var ErrNotRegular = errors.New("not a regular file")

// noOpenat2 is set once openat2 turned out to be missing (ENOSYS); tests set it to cover
// the fallback. EPERM (a seccomp filter that does not know openat2, or a real refusal)
// takes the fallback for that call only, which then says which it was.
var noOpenat2 atomic.Bool

// openRoot opens the store's root directory.
func (s *Store) openRoot() (int, error) {
	fd, err := unix.Open(s.root, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: s.root, Err: err}
	}
	return fd, nil
}

// openBeneath opens rel ("/"-separated, no "." or ".." elements, already checked) below
// the directory rootfd with flags (O_NOFOLLOW and O_CLOEXEC are added) and mode. A
// symbolic link anywhere in rel fails with ELOOP.
func openBeneath(rootfd int, rel string, flags int, mode uint32) (int, error) {
	fd, err := openBeneath1(rootfd, rel, flags, mode)
	if err == unix.ENOTDIR && hasSymlink(rootfd, rel) {
		err = unix.ELOOP // O_DIRECTORY|O_NOFOLLOW on a link says ENOTDIR
	}
	return fd, err
}

func openBeneath1(rootfd int, rel string, flags int, mode uint32) (int, error) {
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	if !noOpenat2.Load() {
		how := &unix.OpenHow{Flags: uint64(flags), Mode: uint64(mode),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
		for {
			fd, err := unix.Openat2(rootfd, rel, how)
			switch {
			case err == unix.EINTR || err == unix.EAGAIN:
				continue // EAGAIN: a rename raced the lookup
			case err == unix.ENOSYS:
				noOpenat2.Store(true)
			case err == unix.EPERM:
			default:
				return fd, err
			}
			break
		}
	}
	dir, last := rootfd, rel
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		var err error
		if dir, err = walkBeneath(rootfd, rel[:i]); err != nil {
			return -1, err
		}
		defer unix.Close(dir)
		last = rel[i+1:]
	}
	for {
		fd, err := unix.Openat(dir, last, flags, mode)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// walkBeneath opens the directory rel below rootfd one element at a time, each with
// O_NOFOLLOW: a symbolic link fails with ELOOP, a file with ENOTDIR.
func walkBeneath(rootfd int, rel string) (int, error) {
	dir := rootfd
	for _, el := range strings.Split(rel, "/") {
		fd, err := unix.Openat(dir, el, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if dir != rootfd {
			unix.Close(dir)
		}
		if err != nil {
			return -1, err
		}
		dir = fd
	}
	return dir, nil
}

// openDir opens the directory rel below rootfd ("" is rootfd itself, duplicated).
func openDir(rootfd int, rel string) (int, error) {
	if rel == "" {
		return unix.FcntlInt(uintptr(rootfd), unix.F_DUPFD_CLOEXEC, 0)
	}
	return openBeneath(rootfd, rel, unix.O_DIRECTORY|unix.O_RDONLY, 0)
}

// mkdirBeneath opens the directory rel below rootfd, creating the missing ones (mode
// 0755) one element at a time, and fsyncs the parent of each it created so the new
// entries survive a crash. A symbolic link in rel fails with ELOOP.
func mkdirBeneath(rootfd int, rel string) (int, error) {
	dir, err := unix.FcntlInt(uintptr(rootfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil || rel == "" {
		return dir, err
	}
	for _, el := range strings.Split(rel, "/") {
		fd, err := unix.Openat(dir, el, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.ENOTDIR && hasSymlink(dir, el) {
			err = unix.ELOOP
		}
		if err == unix.ENOENT {
			if err = unix.Mkdirat(dir, el, 0o700); err == nil {
				err = unix.Fsync(dir)
			}
			if err == nil || err == unix.EEXIST {
				fd, err = unix.Openat(dir, el, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			}
		}
		unix.Close(dir)
		if err != nil {
			return -1, err
		}
		dir = fd
	}
	return dir, nil
}

// hasSymlink reports whether the path rel below dirfd leads through, or to, a symbolic
// link. It only picks the error to report: the opens themselves never follow one.
func hasSymlink(dirfd int, rel string) bool {
	dir := dirfd
	defer func() {
		if dir != dirfd {
			unix.Close(dir)
		}
	}()
	for _, el := range strings.Split(rel, "/") {
		var st unix.Stat_t
		if unix.Fstatat(dir, el, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
			return false
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			return true
		case unix.S_IFDIR:
		default:
			return false
		}
		fd, err := unix.Openat(dir, el, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return false
		}
		if dir != dirfd {
			unix.Close(dir)
		}
		dir = fd
	}
	return false
}

// split returns the directory and base of an object name ("a/b/c" → "a/b", "c").
func split(name string) (dir, base string) {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[:i], name[i+1:]
	}
	return "", name
}

// fileKind names the type of a non-regular file for an error.
func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFLNK:
		return "a symbolic link"
	}
	return fmt.Sprintf("of type %#o", mode&unix.S_IFMT)
}
