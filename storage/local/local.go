// Package local is the storage.Store on a local directory, the embedded default. Objects
// are files under the root; "/" in names makes subdirectories.
//
// A write goes to a temporary file in the object's directory (named TempPrefix-…, hidden
// from List), is fsynced, then renamed over the final name and the directory fsynced, so
// a crash never leaves a partial object under the final name. Create-if-absent renames
// with RENAME_NOREPLACE (or links, where the filesystem lacks it), so of concurrent
// writers exactly one wins. The CRC32C of each object is kept in the user xattr
// "user.podsnapshot.crc32c" where the filesystem allows it and checked on Get.
//
// Names are resolved beneath the root without following symbolic links (beneath.go): a
// link in the store is an error wrapping ErrSymlink, a FIFO, device or socket one wrapping
// ErrNotRegular, and List enters no linked directory. StaleTemps and DeleteTemp let
// podsnapshot gc remove the temporary files of writes that died.
//
// Importing the package registers the "file" URL scheme with storage.Open.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/podsnapshot/podsnapshot/storage"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

func init() {
	storage.Register("file", func(_ context.Context, u *url.URL, o storage.Options) (storage.Store, error) {
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("open store %s: file URL with host %q: want file:///path", u, u.Host)
		}
		return newStore(u.Path, o)
	})
}

// Store is a storage.Store on a directory tree.
type Store struct {
	root string
	log  logrus.FieldLogger
}

var _ storage.Store = (*Store)(nil)

// New opens the store rooted at the absolute directory root, creating it if needed.
func New(root string, opts ...storage.Option) (*Store, error) {
	return newStore(root, storage.NewOptions(opts...))
}

func newStore(root string, o storage.Options) (*Store, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("open store %s: root must be an absolute path", root)
	}
	root = filepath.Clean(root)
	if err := os.MkdirAll(root, 0o700); err != nil { // snapshots hold process memory: root only (README "Security")
		return nil, fmt.Errorf("open store file://%s: %w", root, err)
	}
	return &Store{root: root, log: o.Log}, nil
}

// Root returns the store's directory.
func (s *Store) Root() string { return s.root }

// URL returns "file://<root>/<name>".
func (s *Store) URL(name string) string {
	if name == "" {
		return "file://" + s.root
	}
	return "file://" + s.root + "/" + name
}

// path is the object's path, for messages and file names only: every file operation
// resolves the name beneath the root (beneath.go).
func (s *Store) path(name string) string { return filepath.Join(s.root, filepath.FromSlash(name)) }

func (s *Store) check(name string) error {
	if err := storage.CheckName(name); err != nil {
		return fmt.Errorf("%s: %w", s.URL(name), err)
	}
	return nil
}

// Put writes r to name atomically, replacing any object there.
func (s *Store) Put(ctx context.Context, name string, r io.Reader) (storage.ObjectInfo, error) {
	return s.put(ctx, name, r, false)
}

// PutIfAbsent writes r to name atomically unless name exists; the loser of a race gets an
// error wrapping storage.ErrExists.
func (s *Store) PutIfAbsent(ctx context.Context, name string, r io.Reader) (storage.ObjectInfo, error) {
	return s.put(ctx, name, r, true)
}

// Get opens the object for reading; with a recorded CRC32C the reader verifies it at EOF.
func (s *Store) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	f, fi, err := s.open(name)
	if err != nil {
		return nil, err
	}
	var rc io.ReadCloser = &fileReader{ctx: ctx, f: f, url: s.URL(name)}
	if crc, ok := getCRC(f); ok {
		rc = storage.VerifyingReader(rc, s.URL(name), fi.Size(), crc)
	}
	return rc, nil
}

// GetRange opens length bytes at off (length < 0: to the end).
func (s *Store) GetRange(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	f, fi, err := s.open(name)
	if err != nil {
		return nil, err
	}
	if off < 0 || off > fi.Size() {
		f.Close()
		return nil, fmt.Errorf("%s: offset %d of an object of %d bytes: %w", s.URL(name), off, fi.Size(), storage.ErrOutOfRange)
	}
	if length < 0 || off+length > fi.Size() {
		length = fi.Size() - off
	}
	return &fileReader{ctx: ctx, f: f, url: s.URL(name), off: off, left: length, ranged: true}, nil
}

// open opens the regular file of name beneath the root for reading (see beneath.go).
func (s *Store) open(name string) (*os.File, os.FileInfo, error) {
	if err := s.check(name); err != nil {
		return nil, nil, err
	}
	rootfd, err := s.openRoot()
	if err != nil {
		return nil, nil, s.pathErr(name, err)
	}
	defer unix.Close(rootfd)
	return s.openAt(rootfd, name, name)
}

// openAt opens rel below the directory fd for reading, as the object name. O_NONBLOCK
// keeps the open of a FIFO from waiting for a writer, O_NOCTTY a terminal from becoming
// ours; anything but a regular file is closed again and refused.
func (s *Store) openAt(fd int, rel, name string) (*os.File, os.FileInfo, error) {
	ofd, err := openBeneath(fd, rel, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, s.pathErr(name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(ofd, &st); err != nil {
		unix.Close(ofd)
		return nil, nil, s.pathErr(name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(ofd)
		return nil, nil, s.notRegular(name, st.Mode)
	}
	if err := unix.SetNonblock(ofd, false); err != nil {
		unix.Close(ofd)
		return nil, nil, s.pathErr(name, err)
	}
	f := os.NewFile(uintptr(ofd), s.path(name))
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, s.pathErr(name, err)
	}
	return f, fi, nil
}

// notRegular is the error for an object name that is not a regular file: a directory is
// only not an object (ErrNotFound), anything else is refused (ErrNotRegular).
func (s *Store) notRegular(name string, mode uint32) error {
	if mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("%w (%s)", storage.NotFound(s.URL(name)), fileKind(mode))
	}
	return fmt.Errorf("%s: %w but %s", s.URL(name), ErrNotRegular, fileKind(mode))
}

// pathErr names the object and maps a missing file to storage.ErrNotFound and a symbolic
// link in its path (ELOOP from O_NOFOLLOW or RESOLVE_NO_SYMLINKS, EXDEV from
// RESOLVE_BENEATH) to ErrSymlink.
func (s *Store) pathErr(name string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotDir):
		return storage.NotFound(s.URL(name))
	case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV):
		return fmt.Errorf("%s: %w", s.URL(name), ErrSymlink)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("%s: %w", s.URL(name), err)
}

// Stat returns the object's size, CRC32C (when recorded) and modification time.
func (s *Store) Stat(_ context.Context, name string) (storage.ObjectInfo, error) {
	if err := s.check(name); err != nil {
		return storage.ObjectInfo{}, err
	}
	return s.stat(name)
}

func (s *Store) stat(name string) (storage.ObjectInfo, error) {
	f, fi, err := s.open(name)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	defer f.Close()
	return fileInfo(name, f, fi), nil
}

// fileInfo is the ObjectInfo of the open object file f.
func fileInfo(name string, f *os.File, fi os.FileInfo) storage.ObjectInfo {
	info := storage.ObjectInfo{Name: name, Size: fi.Size(), Updated: fi.ModTime()}
	info.CRC32C, info.HasCRC32C = getCRC(f)
	return info
}

// List walks the directories that can hold names starting with prefix. It lists regular
// files only and does not enter symbolically linked directories.
func (s *Store) List(ctx context.Context, prefix string) ([]storage.ObjectInfo, error) {
	start := ""
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		if err := storage.CheckName(prefix[:i]); err != nil { // also keeps the walk under root
			return nil, fmt.Errorf("list %s*: %w", s.URL(prefix), err)
		}
		start = prefix[:i]
	}
	rootfd, err := s.openRoot()
	if err != nil {
		return nil, fmt.Errorf("list %s*: %w", s.URL(prefix), err)
	}
	defer unix.Close(rootfd)
	// Descend only where names below can still match the prefix.
	enter := func(rel string) bool {
		return !storage.IsTemp(rel) && (strings.HasPrefix(rel+"/", prefix) || strings.HasPrefix(prefix, rel+"/"))
	}
	var out []storage.ObjectInfo
	err = walk(ctx, rootfd, start, enter, func(dirfd int, rel string, d fs.DirEntry) error {
		if !d.Type().IsRegular() || !strings.HasPrefix(rel, prefix) || storage.IsTemp(rel) {
			return nil
		}
		f, fi, err := s.openAt(dirfd, d.Name(), rel)
		switch {
		case errors.Is(err, storage.ErrNotFound), errors.Is(err, ErrNotRegular), errors.Is(err, ErrSymlink):
			return nil // deleted or replaced meanwhile
		case err != nil:
			return err
		}
		defer f.Close()
		out = append(out, fileInfo(rel, f, fi))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s*: %w", s.URL(prefix), err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Delete removes the object, then any directories it leaves empty below the root. A
// symbolic link or other non-directory entry at name is removed as the entry it is
// (never what it points to); a symbolic link in the path before it is refused.
func (s *Store) Delete(_ context.Context, name string) error {
	if err := s.check(name); err != nil {
		return err
	}
	return s.remove(name)
}

// openParent opens the store root and, beneath it without following links, the
// directory holding name; it returns both descriptors (the caller closes them), that
// directory's path relative to the root and name's last element. Errors name the object.
func (s *Store) openParent(name string) (rootfd, dirfd int, dir, base string, err error) {
	rootfd, err = s.openRoot()
	if err != nil {
		return -1, -1, "", "", s.pathErr(name, err)
	}
	dir, base = split(name)
	dirfd, err = openDir(rootfd, dir)
	if err != nil {
		unix.Close(rootfd)
		return -1, -1, "", "", s.pathErr(name, err)
	}
	return rootfd, dirfd, dir, base, nil
}

// remove unlinks name (checked by the caller) beneath the root and prunes the emptied
// directories.
func (s *Store) remove(name string) error {
	rootfd, dirfd, dir, base, err := s.openParent(name)
	if err != nil {
		return err
	}
	defer unix.Close(rootfd)
	defer unix.Close(dirfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return s.pathErr(name, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return storage.NotFound(s.URL(name))
	}
	if err := unix.Unlinkat(dirfd, base, 0); err != nil {
		return s.pathErr(name, err)
	}
	s.prune(rootfd, dir)
	return nil
}

// prune removes dir and its parents below the root while they are empty, each from its
// parent's fd.
func (s *Store) prune(rootfd int, dir string) {
	for dir != "" {
		parent, base := split(dir)
		pfd, err := openDir(rootfd, parent)
		if err != nil {
			return
		}
		err = unix.Unlinkat(pfd, base, unix.AT_REMOVEDIR)
		unix.Close(pfd)
		if err != nil {
			return // not empty, or gone
		}
		dir = parent
	}
}

// Close does nothing.
func (s *Store) Close() error { return nil }

// fileReader reads an open object file, stopping when ctx ends; ranged readers read
// left bytes from off with ReadAt.
type fileReader struct {
	ctx    context.Context
	f      *os.File
	url    string
	ranged bool
	off    int64
	left   int64
}

func (r *fileReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, fmt.Errorf("%s: %w", r.url, err)
	}
	if !r.ranged {
		n, err := r.f.Read(p)
		if err != nil && err != io.EOF {
			err = fmt.Errorf("%s: %w", r.url, err)
		}
		return n, err
	}
	if r.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.f.ReadAt(p, r.off)
	r.off += int64(n)
	r.left -= int64(n)
	if err == io.EOF && r.left > 0 {
		err = fmt.Errorf("%s: %w (object shrank)", r.url, io.ErrUnexpectedEOF)
	} else if err == io.EOF {
		err = nil
	} else if err != nil {
		err = fmt.Errorf("%s: %w", r.url, err)
	}
	return n, err
}

func (r *fileReader) Close() error { return r.f.Close() }

// Link makes path a hard link to the object name (storage.Linker): a restore takes the
// node-local snapshot's uncompressed files without copying them. The link is to the
// regular file beneath the root, never to a symbolic link (which runsc would resolve
// again later): the entry is checked, linked without following, and the link compared
// with the file opened. It fails where path exists or is on another filesystem.
func (s *Store) Link(_ context.Context, name, path string) error {
	if err := s.check(name); err != nil {
		return err
	}
	rootfd, dirfd, _, base, err := s.openParent(name)
	if err != nil {
		return err
	}
	unix.Close(rootfd)
	defer unix.Close(dirfd)
	f, fi, err := s.openAt(dirfd, base, name)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Linkat(dirfd, base, unix.AT_FDCWD, path, 0); err != nil {
		return fmt.Errorf("%s: link to %s: %w", s.URL(name), path, err)
	}
	// The entry may have been swapped for a link between the open and linkat.
	if li, err := os.Lstat(path); err != nil || !os.SameFile(fi, li) || !li.Mode().IsRegular() {
		os.Remove(path)
		return fmt.Errorf("%s: link to %s: %w (the object changed while linked)", s.URL(name), path, ErrNotRegular)
	}
	return nil
}
