// Package cache keeps decompressed, verified snapshots on the node, keyed by snapshot
// UUID, so that the second and later restores of one snapshot skip the download and
// decompression and cost what a plain `runsc restore` from local files costs.
//
// An entry is a directory <Dir>/<uuid> holding the image files; it appears by rename
// once complete, so a reader never sees half an entry. Its modification time is its last
// use. When the entries exceed MaxBytes, the least recently used are removed, except
// those used within the last InUseGrace (a restore may still be reading them).
package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// InUseGrace is how long after its last use an entry is never evicted.
const InUseGrace = 10 * time.Minute

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

// Get returns the entry of uuid and marks it used; ok is false when there is none.
func (c *Cache) Get(uuid string) (dir string, ok bool) {
	if !c.Enabled() {
		return "", false
	}
	dir = filepath.Join(c.Dir, uuid)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return "", false
	}
	now := c.now()
	_ = os.Chtimes(dir, now, now)
	return dir, true
}

// Fill makes the entry of uuid by calling fetch on an empty temporary directory and, if
// fetch succeeds, renaming it into place; then it evicts entries over MaxBytes. It
// returns the entry's directory and whether it is cached (false: caching is disabled
// and the caller owns and removes dir). On error nothing is left behind.
func (c *Cache) Fill(uuid string, fetch func(dir string) error) (dir string, cached bool, err error) {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return "", false, fmt.Errorf("snapshot cache: %w", err)
	}
	tmp, err := os.MkdirTemp(c.Dir, ".fill-"+uuid+"-")
	if err != nil {
		return "", false, fmt.Errorf("snapshot cache: %w", err)
	}
	if err := fetch(tmp); err != nil {
		os.RemoveAll(tmp)
		return "", false, err
	}
	if !c.Enabled() {
		return tmp, false, nil
	}
	final := filepath.Join(c.Dir, uuid)
	if err := os.Rename(tmp, final); err != nil {
		// Another restore of the same snapshot filled it first: use that one.
		os.RemoveAll(tmp)
		if _, ok := c.Get(uuid); !ok {
			return "", false, fmt.Errorf("snapshot cache: %w", err)
		}
	}
	now := c.now()
	_ = os.Chtimes(final, now, now)
	c.evict(uuid)
	return final, true, nil
}

type entry struct {
	path string
	size int64
	used time.Time
}

// evict removes the least recently used entries until the cache fits MaxBytes, never
// keep's entry nor one used within InUseGrace. Leftover temporary directories older than
// InUseGrace (a crashed fill) go too.
func (c *Cache) evict(keep string) {
	names, err := os.ReadDir(c.Dir)
	if err != nil {
		return
	}
	var entries []entry
	var total int64
	for _, n := range names {
		path := filepath.Join(c.Dir, n.Name())
		info, err := n.Info()
		if err != nil {
			continue
		}
		if strings.HasPrefix(n.Name(), ".fill-") {
			if c.now().Sub(info.ModTime()) > InUseGrace {
				os.RemoveAll(path)
			}
			continue
		}
		size := dirSize(path)
		total += size
		if n.Name() != keep {
			entries = append(entries, entry{path, size, info.ModTime()})
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].used.Before(entries[j].used) })
	for _, e := range entries {
		if total <= c.MaxBytes {
			return
		}
		if c.now().Sub(e.used) < InUseGrace {
			continue
		}
		if err := os.RemoveAll(e.path); err == nil || errors.Is(err, os.ErrNotExist) {
			total -= e.size
		}
	}
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
