package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Claim is the outcome of Cache.Claim: exactly one of its fields is set.
type Claim struct {
	// Entry is the complete entry of the key: nothing to fill. It was marked used.
	Entry string
	// Filling is the temporary directory of another fill of the key in progress (its
	// filler holds its lock): share it instead of downloading again (see Fill's
	// streaming counterpart in checkpoint/stream), and TakeOver it should its filler die.
	Filling string
	// Fill is this caller's fill: fill Fill.Dir, then Publish or Abort.
	Fill *Filling
}

// Filling is one fill in progress, held by its filler: Dir is locked until Publish or
// Abort.
type Filling struct {
	// Dir is the temporary directory to fill.
	Dir string
	// Private: caching is disabled; Publish leaves Dir where it is and the caller owns
	// and removes it.
	Private bool
	// Synced is how long Publish spent making the fill durable (fsync) before it became
	// the entry; set by Publish.
	Synced  time.Duration
	c       *Cache
	key     string
	size    int64
	release func()
}

// Claim decides, under the cache lock, who fills the entry of key: nobody (it exists:
// Entry), another fill in progress (Filling), or this caller (Fill, with room for size
// bytes reserved as Fill reserves it). Errors as Fill's, before anything is written.
// With caching disabled the caller always fills a private directory.
func (c *Cache) Claim(key string, size int64) (Claim, error) {
	if !ValidKey(key) {
		return Claim{}, fmt.Errorf("snapshot cache %s: invalid entry key %q", c.Dir, key)
	}
	if size < 0 {
		return Claim{}, fmt.Errorf("snapshot cache %s: negative size %d", c.Dir, size)
	}
	if !c.Enabled() {
		tmp, err := c.privateDir(key)
		if err != nil {
			return Claim{}, err
		}
		return Claim{Fill: &Filling{Dir: tmp, Private: true, c: c, key: key, release: func() {}}}, nil
	}
	reserve := size + int64(len(key))
	if reserve > c.MaxBytes {
		return Claim{}, fmt.Errorf("snapshot cache %s: snapshot of %d bytes is %w of %d bytes", c.Dir, size, ErrTooLarge, c.MaxBytes)
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return Claim{}, fmt.Errorf("snapshot cache: %w", err)
	}
	unlock, err := c.lock()
	if err != nil {
		return Claim{}, err
	}
	defer unlock()
	if dir := c.liveFill(key); dir != "" {
		return Claim{Filling: dir}, nil
	}
	tmp, release, done, err := c.reserveLocked(key, reserve)
	switch {
	case err != nil:
		return Claim{}, err
	case done:
		return Claim{Entry: filepath.Join(c.Dir, key)}, nil
	}
	return Claim{Fill: &Filling{Dir: tmp, c: c, key: key, size: size, release: release}}, nil
}

// liveFill returns the temporary directory of a fill of key whose filler holds its lock,
// or "".
func (c *Cache) liveFill(key string) string {
	names, _ := os.ReadDir(c.Dir)
	for _, e := range names {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), fillPrefix+key+"-") {
			continue
		}
		path := filepath.Join(c.Dir, e.Name())
		if held, _ := lockHeld(path); held {
			return path
		}
	}
	return ""
}

// lockHeld reports whether another holds the flock of the directory dir, taking it for
// an instant if not. err is lockDir's when it could tell neither.
func lockHeld(dir string) (held bool, err error) {
	release, err := lockDir(dir)
	switch {
	case err == nil:
		release()
		return false, nil
	case errors.Is(err, unix.EWOULDBLOCK):
		return true, nil
	}
	return false, err
}

// TakeOver makes the caller the filler of dir, a fill of key (a Claim's Filling) whose
// filler died: it takes dir's lock without waiting. ok is false when another holds it
// (the filler lives, or another took over) or dir is gone.
func (c *Cache) TakeOver(dir, key string, size int64) (f *Filling, ok bool) {
	if !strings.HasPrefix(filepath.Base(dir), fillPrefix+key+"-") {
		return nil, false
	}
	release, err := lockDir(dir)
	if err != nil {
		return nil, false
	}
	return &Filling{Dir: dir, c: c, key: key, size: size, release: release}, true
}

// FillerAlive reports whether the filler of the fill directory dir (a Claim's Filling)
// may still be at work. false: it ended (its process died, or it published or removed
// dir); a shim waiting on the fill need not wait any longer. Probing takes dir's lock
// for an instant, under the cache lock as liveFill and eviction do, so that neither
// mistakes the probe for a live filler. An error other than dir's absence (the
// descriptors are used up) says nothing: alive.
func (c *Cache) FillerAlive(dir string) bool {
	unlock, err := c.lock()
	if err != nil {
		return true
	}
	defer unlock()
	held, err := lockHeld(dir)
	if err != nil {
		return !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR)
	}
	return held
}

// Publish makes the filled directory the entry of its key (see Fill: the size declared
// at Claim bounds it, the marker is written, the files are made durable, an entry made
// meanwhile wins) and returns
// the entry's directory; for a private fill it returns Dir unchanged. On error the fill
// is removed.
func (f *Filling) Publish() (string, error) {
	if f.Private {
		return f.Dir, nil
	}
	defer f.release()
	if got := dirSize(f.Dir); got > f.size {
		os.RemoveAll(f.Dir)
		return "", fmt.Errorf("snapshot cache %s: the fill wrote %d bytes, %d were declared", f.c.Dir, got, f.size)
	}
	synced, err := syncFill(f.Dir, f.key)
	if err != nil {
		os.RemoveAll(f.Dir)
		return "", err
	}
	f.Synced = synced
	final := filepath.Join(f.c.Dir, f.key)
	if err := f.c.publish(f.Dir, final, f.key); err != nil {
		return "", err
	}
	return final, nil
}

// Abort removes the fill.
func (f *Filling) Abort() {
	os.RemoveAll(f.Dir)
	f.release()
}

// Release lets go of the fill without removing it: another shim sharing it may take it
// over (TakeOver); otherwise the next fill removes it as a crashed fill's.
func (f *Filling) Release() { f.release() }
