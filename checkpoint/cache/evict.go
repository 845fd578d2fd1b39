package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// fillPrefix starts a fill's temporary directory: ".fill-<key>-<reserved bytes>-<random>".
	fillPrefix = ".fill-"
	// evictPrefix starts an entry being removed: ".evict-<key>-<random>".
	evictPrefix = ".evict-"
)

type entry struct {
	path string
	size int64
	used time.Time
}

// makeRoom evicts the least recently used entries until need more bytes fit MaxBytes
// beside the remaining entries and the fills in progress (counted at their
// reservation), never an entry used within InUseGrace. It removes the leftovers of
// crashed fills and interrupted evictions on the way. It runs under the cache lock.
// The error wraps ErrNoRoom when what may not be evicted leaves no room.
func (c *Cache) makeRoom(need int64) error {
	names, err := os.ReadDir(c.Dir)
	if err != nil {
		return fmt.Errorf("snapshot cache: %w", err)
	}
	var entries []entry
	var held int64
	for _, n := range names {
		name := n.Name()
		path := filepath.Join(c.Dir, name)
		switch {
		case strings.HasPrefix(name, fillPrefix):
			held += c.fillHeld(path, name)
		case strings.HasPrefix(name, evictPrefix):
			if ValidKey(strings.SplitN(strings.TrimPrefix(name, evictPrefix), "-", 2)[0]) {
				os.RemoveAll(path)
				held += dirSize(path)
			}
		case oldEntry(name):
			// An entry of the cache before it was keyed by store and checksums (named
			// by snapshot UUID): nothing serves it any more.
			held += c.remove(path)
		case ValidKey(name) && isEntry(path, name):
			info, err := os.Lstat(path)
			if err != nil {
				continue
			}
			e := entry{path, dirSize(path), info.ModTime()}
			entries = append(entries, e)
			held += e.size
		}
	}
	if held+need <= c.MaxBytes {
		return nil
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].used.Before(entries[j].used) })
	for _, e := range entries {
		if held+need <= c.MaxBytes {
			return nil
		}
		if c.now().Sub(e.used) < InUseGrace {
			continue
		}
		held -= e.size - c.remove(e.path)
	}
	if held+need <= c.MaxBytes {
		return nil
	}
	return fmt.Errorf("snapshot cache %s: %w for %d bytes: %d of its %d bytes are held by entries used in the last %v and fills in progress",
		c.Dir, ErrNoRoom, need, held, c.MaxBytes, InUseGrace)
}

// fillHeld returns the bytes a fill temporary holds against the limit: its reservation
// (or more, if it wrote more) while its filler holds its lock; a temporary nobody locks
// is a crashed fill's and is removed (0). A name not of the cache's form counts nothing.
func (c *Cache) fillHeld(path, name string) int64 {
	parts := strings.SplitN(strings.TrimPrefix(name, fillPrefix), "-", 3)
	if len(parts) != 3 || !ValidKey(parts[0]) {
		return 0
	}
	reserved, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || reserved < 0 {
		return 0
	}
	release, err := lockDir(path)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return max(reserved, dirSize(path))
	}
	if err != nil {
		return 0 // gone meanwhile, or not a directory: not a fill
	}
	defer release()
	os.RemoveAll(path)
	return dirSize(path)
}

// oldEntry reports whether name is an entry of the cache's former layout: a snapshot
// UUID (8-4-4-4-12 lower-case hex digits).
func oldEntry(name string) bool {
	if len(name) != 36 {
		return false
	}
	for i, r := range name {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
				return false
			}
		}
	}
	return true
}

// Discard removes the entry of key, whose files failed a restore (the next restore
// downloads them afresh): under the cache lock, out of sight first, as eviction does.
// A key without an entry is no error.
func (c *Cache) Discard(key string) error {
	if !c.Enabled() || !ValidKey(key) {
		return nil
	}
	unlock, err := c.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if path := filepath.Join(c.Dir, key); isEntry(path, key) {
		c.remove(path)
	}
	return nil
}

// remove takes the entry at path out of sight by renaming it (a reader never sees half
// an entry), then deletes it. It returns the bytes left on disk: the whole entry when
// the rename failed, what RemoveAll could not delete otherwise (the next fill retries).
func (c *Cache) remove(path string) (left int64) {
	gone := filepath.Join(c.Dir, fmt.Sprintf("%s%s-%d", evictPrefix, filepath.Base(path), c.now().UnixNano()))
	if err := os.Rename(path, gone); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0
		}
		return dirSize(path)
	}
	os.RemoveAll(gone)
	return dirSize(gone)
}

// lock takes the cache lock (an exclusive flock on LockFile in Dir, waiting for it) and
// returns its release.
func (c *Cache) lock() (unlock func(), err error) {
	fd, err := unix.Open(filepath.Join(c.Dir, LockFile), unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("snapshot cache: lock %s: %w", filepath.Join(c.Dir, LockFile), err)
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("snapshot cache: lock %s: %w", filepath.Join(c.Dir, LockFile), err)
	}
	return func() { unix.Close(fd) }, nil
}

// lockDir takes an exclusive flock on the directory dir (not following a link) without
// waiting: unix.EWOULDBLOCK when another holds it. release closes it.
func lockDir(dir string) (release func(), err error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return func() { unix.Close(fd) }, nil
}

// dirSize is the bytes of the regular files under dir, links not followed; 0 for a
// missing dir.
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
