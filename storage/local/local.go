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
	if err := os.MkdirAll(root, 0o755); err != nil {
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
		return nil, fmt.Errorf("%s: range offset %d outside object of %d bytes", s.URL(name), off, fi.Size())
	}
	if length < 0 || off+length > fi.Size() {
		length = fi.Size() - off
	}
	return &fileReader{ctx: ctx, f: f, url: s.URL(name), off: off, left: length, ranged: true}, nil
}

func (s *Store) open(name string) (*os.File, os.FileInfo, error) {
	if err := s.check(name); err != nil {
		return nil, nil, err
	}
	f, err := os.Open(s.path(name))
	if err != nil {
		return nil, nil, s.pathErr(name, err)
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fs.ErrNotExist
	}
	if err != nil {
		f.Close()
		return nil, nil, s.pathErr(name, err)
	}
	return f, fi, nil
}

// pathErr names the object and maps a missing file to storage.ErrNotFound.
func (s *Store) pathErr(name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotDir) {
		return storage.NotFound(s.URL(name))
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
	p := s.path(name)
	fi, err := os.Stat(p)
	if err == nil && !fi.Mode().IsRegular() {
		err = fs.ErrNotExist
	}
	if err != nil {
		return storage.ObjectInfo{}, s.pathErr(name, err)
	}
	info := storage.ObjectInfo{Name: name, Size: fi.Size(), Updated: fi.ModTime()}
	info.CRC32C, info.HasCRC32C = getCRCPath(p)
	return info, nil
}

// List walks the directories that can hold names starting with prefix.
func (s *Store) List(ctx context.Context, prefix string) ([]storage.ObjectInfo, error) {
	start := s.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		if err := storage.CheckName(prefix[:i]); err != nil { // also keeps the walk under root
			return nil, fmt.Errorf("list %s*: %w", s.URL(prefix), err)
		}
		start = s.path(prefix[:i])
	}
	var out []storage.ObjectInfo
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == start && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == s.root {
			return nil
		}
		rel := filepath.ToSlash(strings.TrimPrefix(p, s.root+string(filepath.Separator)))
		if strings.HasPrefix(d.Name(), storage.TempPrefix) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			// Descend only where names below can still match the prefix.
			if !strings.HasPrefix(rel+"/", prefix) && !strings.HasPrefix(prefix, rel+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(rel, prefix) {
			return nil
		}
		info, err := s.stat(rel)
		if errors.Is(err, storage.ErrNotFound) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return err
		}
		out = append(out, info)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s*: %w", s.URL(prefix), err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Delete removes the object, then any directories it leaves empty below the root.
func (s *Store) Delete(_ context.Context, name string) error {
	if err := s.check(name); err != nil {
		return err
	}
	p := s.path(name)
	if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
		return storage.NotFound(s.URL(name))
	}
	if err := os.Remove(p); err != nil {
		return s.pathErr(name, err)
	}
	for dir := filepath.Dir(p); dir != s.root && strings.HasPrefix(dir, s.root); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break // not empty, or gone
		}
	}
	return nil
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
// node-local snapshot's uncompressed files without copying them. It fails where path
// exists or is on another filesystem.
func (s *Store) Link(_ context.Context, name, path string) error {
	if err := s.check(name); err != nil {
		return err
	}
	if err := os.Link(s.path(name), path); err != nil {
		return fmt.Errorf("%s: link to %s: %w", s.URL(name), path, err)
	}
	return nil
}
