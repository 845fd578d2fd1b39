// Package cache keeps decompressed, verified snapshots on the node, so that the second
// and later restores of one snapshot skip the download and decompression and cost what a
// plain `runsc restore` from local files costs.
//
// An entry is a directory <Dir>/<key> holding the image files and a marker file
// (EntryMarker) whose content is the key; key is 64 lowercase hex digits (the caller's
// hash of what identifies the snapshot's bytes, see repo.Fetch). An entry appears by
// rename once complete, so a reader never sees half an entry. Its modification time is
// its last use.
//
// The cache touches only what it made: entries (the name is a key and the marker holds
// it), its fill temporaries ".fill-<key>-<bytes>-*", directories it is removing
// (".evict-<key>-*") and its lock file (LockFile). Anything else in Dir (a sandbox's
// checkpoint image when Dir was misconfigured, a file an operator left) is neither
// counted nor evicted nor served.
//
// The limit: after any Fill the entries and the fills in progress hold at most MaxBytes
// (file bytes, as declared before the fill). A fill first reserves its declared size:
// larger than MaxBytes is ErrTooLarge; otherwise the least recently used entries are
// evicted until it fits, except entries used within InUseGrace (a restore may still be
// reading them) and fills in progress; when those alone leave no room the fill is
// refused with ErrNoRoom rather than exceeding the limit. The shims of one node share
// Dir: reservations, eviction and the renames are serialized by an flock on LockFile, and
// a fill in progress holds an flock on its temporary directory, so that a crashed fill's
// leftovers (unlocked) are removed at the next fill and a live one is never touched.
package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// InUseGrace is how long after its last use an entry is never evicted.
const InUseGrace = 10 * time.Minute

// EntryMarker is the file in every entry that marks it as the cache's; it holds the key.
const EntryMarker = ".podsnapshot-cache-entry"

// LockFile is the file in Dir whose flock serializes the shims' reservations and evictions.
const LockFile = ".podsnapshot-cache.lock"

// ErrTooLarge is wrapped by Fill's error for a snapshot larger than MaxBytes.
var ErrTooLarge = errors.New("larger than the node cache limit")

// ErrNoRoom is wrapped by Fill's error when the entries in use and the fills in progress
// leave no room for a snapshot under MaxBytes.
var ErrNoRoom = errors.New("no room in the node cache")

// Cache is a directory of snapshot images. The zero MaxBytes disables caching: Fill
// still works (into a private directory the caller removes), but nothing is kept.
type Cache struct {
	Dir      string
	MaxBytes int64
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (c *Cache) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Enabled reports whether entries are kept.
func (c *Cache) Enabled() bool { return c != nil && c.MaxBytes > 0 && c.Dir != "" }

// ValidKey reports whether key can name an entry: 64 lowercase hex digits.
func ValidKey(key string) bool {
	if len(key) != 64 {
		return false
	}
	for _, r := range key {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
			return false
		}
	}
	return true
}

// Get returns the entry of key and marks it used; ok is false when there is none, the
// cache is disabled, or key is not ValidKey.
func (c *Cache) Get(key string) (dir string, ok bool) {
	if !c.Enabled() || !ValidKey(key) {
		return "", false
	}
	if fi, err := os.Stat(c.Dir); err != nil || !fi.IsDir() {
		return "", false
	}
	// Under the lock, so that an eviction that saw the entry unused does not remove it
	// after it was handed out.
	unlock, err := c.lock()
	if err != nil {
		return "", false
	}
	defer unlock()
	dir = filepath.Join(c.Dir, key)
	if !isEntry(dir, key) {
		return "", false
	}
	now := c.now()
	_ = os.Chtimes(dir, now, now)
	return dir, true
}

// Fill makes the entry of key by calling fetch on an empty temporary directory and, if
// fetch succeeds, making it durable (fsync) and renaming it into place. size is the bytes fetch will write (the sum of
// the files' raw sizes): room for it is made before fetch runs (see the package doc), and
// a fetch that wrote more is an error. It returns the entry's directory and whether it
// is cached (false: caching is disabled and the caller owns and removes dir). An entry
// of key made meanwhile by another fill is returned without calling fetch. Errors:
// an invalid key or negative size; ErrTooLarge or ErrNoRoom (wrapped, before fetch
// runs); fetch's error as it is; file system errors naming Dir. On error nothing is left
// behind.
func (c *Cache) Fill(key string, size int64, fetch func(dir string) error) (dir string, cached bool, err error) {
	if !ValidKey(key) {
		return "", false, fmt.Errorf("snapshot cache %s: invalid entry key %q", c.Dir, key)
	}
	if size < 0 {
		return "", false, fmt.Errorf("snapshot cache %s: negative size %d", c.Dir, size)
	}
	if !c.Enabled() {
		return c.fillPrivate(key, fetch)
	}
	// The marker is written besides the files.
	reserve := size + int64(len(key))
	if reserve > c.MaxBytes {
		return "", false, fmt.Errorf("snapshot cache %s: snapshot of %d bytes is %w of %d bytes", c.Dir, size, ErrTooLarge, c.MaxBytes)
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return "", false, fmt.Errorf("snapshot cache: %w", err)
	}
	final := filepath.Join(c.Dir, key)
	tmp, release, done, err := c.reserve(key, reserve)
	if err != nil {
		return "", false, err
	}
	if done {
		return final, true, nil
	}
	defer release()
	if err := fetch(tmp); err != nil {
		os.RemoveAll(tmp)
		return "", false, err
	}
	if got := dirSize(tmp); got > size {
		os.RemoveAll(tmp)
		return "", false, fmt.Errorf("snapshot cache %s: the fetch wrote %d bytes, %d were declared", c.Dir, got, size)
	}
	if _, err := syncFill(tmp, key); err != nil {
		os.RemoveAll(tmp)
		return "", false, err
	}
	if err := c.publish(tmp, final, key); err != nil {
		return "", false, err
	}
	return final, true, nil
}

// reserve makes room for reserve bytes and creates the fill's locked temporary directory,
// all under the cache lock. done is true (and tmp empty) when the entry of key already
// exists: it was marked used. release unlocks the temporary directory.
func (c *Cache) reserve(key string, reserve int64) (tmp string, release func(), done bool, err error) {
	unlock, err := c.lock()
	if err != nil {
		return "", nil, false, err
	}
	defer unlock()
	return c.reserveLocked(key, reserve)
}

// reserveLocked is reserve with the cache lock held by the caller.
func (c *Cache) reserveLocked(key string, reserve int64) (tmp string, release func(), done bool, err error) {
	final := filepath.Join(c.Dir, key)
	if isEntry(final, key) {
		now := c.now()
		_ = os.Chtimes(final, now, now)
		return "", nil, true, nil
	}
	if err := c.makeRoom(reserve); err != nil {
		return "", nil, false, err
	}
	tmp, err = os.MkdirTemp(c.Dir, fmt.Sprintf("%s%s-%d-", fillPrefix, key, reserve))
	if err != nil {
		return "", nil, false, fmt.Errorf("snapshot cache: %w", err)
	}
	release, err = lockDir(tmp)
	if err != nil {
		os.RemoveAll(tmp)
		return "", nil, false, err
	}
	return tmp, release, false, nil
}

// publish renames the complete tmp to final under the cache lock, so that the entry and
// its reservation are never both missing from a count. When final appeared meanwhile (a
// concurrent fill of the same key) that entry is kept and tmp removed.
func (c *Cache) publish(tmp, final, key string) error {
	unlock, err := c.lock()
	if err != nil {
		os.RemoveAll(tmp)
		return err
	}
	defer unlock()
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		if !isEntry(final, key) {
			return fmt.Errorf("snapshot cache: %w", err)
		}
	}
	// The rename itself, durable: otherwise a power loss may undo it (the fill is then a
	// crashed fill's leftovers, removed at the next fill).
	_ = syncPath(c.Dir)
	now := c.now()
	_ = os.Chtimes(final, now, now)
	return nil
}

// fillPrivate fetches into a private directory of a disabled cache. Its prefix is not
// one an enabled cache sharing Dir removes: the caller owns it until it removes it.
func (c *Cache) fillPrivate(key string, fetch func(dir string) error) (string, bool, error) {
	tmp, err := c.privateDir(key)
	if err != nil {
		return "", false, err
	}
	if err := fetch(tmp); err != nil {
		os.RemoveAll(tmp)
		return "", false, err
	}
	return tmp, false, nil
}

// privateDir creates a private directory for key in a disabled cache.
func (c *Cache) privateDir(key string) (string, error) {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return "", fmt.Errorf("snapshot cache: %w", err)
	}
	tmp, err := os.MkdirTemp(c.Dir, ".private-"+key+"-")
	if err != nil {
		return "", fmt.Errorf("snapshot cache: %w", err)
	}
	return tmp, nil
}

// isEntry reports whether path is a directory (not a link) holding EntryMarker (a
// regular file) whose content is key.
func isEntry(path, key string) bool {
	fi, err := os.Lstat(path)
	if err != nil || !fi.IsDir() {
		return false
	}
	marker := filepath.Join(path, EntryMarker)
	mi, err := os.Lstat(marker)
	if err != nil || !mi.Mode().IsRegular() || mi.Size() != int64(len(key)) {
		return false
	}
	got, err := os.ReadFile(marker)
	return err == nil && string(got) == key
}
