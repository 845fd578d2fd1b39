package local

import (
	"context"
	"errors"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// walk visits the entries below the directory start (relative to the root, "" for the
// root; "/"-separated) with visit, depth first: each entry's directory fd, its name
// relative to the root, and its type as the directory lists it. It enters a directory
// when enter(rel) is true, and never a symbolic link to one, since its entry is a link.
// A start that is missing, a file, or has a symbolic link in its path has no entries.
func walk(ctx context.Context, rootfd int, start string, enter func(rel string) bool,
	visit func(dirfd int, rel string, d fs.DirEntry) error) error {
	fd, err := openDir(rootfd, start)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		return nil
	case err != nil:
		return &os.PathError{Op: "open directory", Path: start, Err: err}
	}
	return walkDir(ctx, fd, start, enter, visit)
}

// walkDir is walk of the directory open as fd, which it closes.
func walkDir(ctx context.Context, fd int, rel string, enter func(rel string) bool,
	visit func(dirfd int, rel string, d fs.DirEntry) error) error {
	dir := os.NewFile(uintptr(fd), rel)
	defer dir.Close()
	entries, err := dir.ReadDir(-1)
	if err != nil {
		return &os.PathError{Op: "read directory", Path: rel, Err: err}
	}
	for _, d := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		child := d.Name()
		if rel != "" {
			child = rel + "/" + child
		}
		if err := visit(int(dir.Fd()), child, d); err != nil {
			return err
		}
		if !d.IsDir() || !enter(child) {
			continue
		}
		sub, err := unix.Openat(int(dir.Fd()), d.Name(), unix.O_DIRECTORY|unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				continue // removed, or replaced by a link or a file, since listed
			}
			return &os.PathError{Op: "open directory", Path: child, Err: err}
		}
		if err := walkDir(ctx, sub, child, enter, visit); err != nil {
			return err
		}
	}
	return nil
}
