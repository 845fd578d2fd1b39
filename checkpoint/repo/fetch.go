package repo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/storage"
)

// markFailedTimeout bounds the write that marks a corrupt snapshot failed, which runs
// even when the fetch was cancelled: an unreachable store must not hold the caller.
const markFailedTimeout = time.Minute

// Cached returns m's entry in the node cache c and marks it used; ok is false when c
// holds none or is disabled (nil, or MaxBytes 0). The entry is the cache's: the caller
// only reads it. Entries are keyed by CacheKey: a manifest of another store, namespace or
// policy, or with other files, reusing m's UUID never gets m's entry.
//
// An entry whose files are not the sizes m records (cut short in place: a local store's
// uncompressed object is hard-linked into it) is discarded and not returned: a restore
// trusts an entry without reading it first.
func (r *Repo) Cached(c *cache.Cache, m *manifest.Manifest) (dir string, ok bool) {
	key := CacheKey(r.Store.URL(""), m)
	dir, ok = c.Get(key)
	if !ok {
		return "", false
	}
	for _, f := range m.Files {
		name, known := localName(f.Name)
		fi, err := os.Stat(filepath.Join(dir, name))
		if !known || err != nil || fi.Size() != f.RawSize {
			_ = c.Discard(key)
			return "", false
		}
	}
	return dir, true
}

// CacheKey is the node cache key of m read from the store at storeURL: the sha256 (64
// lowercase hex digits) of the store URL, m's namespace, policy and UUID, and each
// file's name, raw size, codec and checksums, so that equal keys mean the same bytes
// from the same place.
func CacheKey(storeURL string, m *manifest.Manifest) string {
	type file struct {
		Name   string
		Raw    int64
		Codec  string
		XXH64  string
		CRC32C uint32
	}
	id := struct {
		Store, Namespace, Policy, UUID string
		Files                          []file
	}{Store: storeURL, Namespace: m.Namespace, Policy: m.Policy, UUID: m.UUID}
	for _, f := range m.Files {
		id.Files = append(id.Files, file{f.Name, f.RawSize, f.Codec, f.XXH64, f.CRC32C})
	}
	// JSON quotes every string: no two identities encode alike.
	b, err := json.Marshal(id)
	if err != nil {
		panic(err) // strings and numbers always marshal
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Fetch downloads and verifies m's files (Download) into the node cache c and returns
// the directory holding the image files (checkpoint.img, ...). private is false for a
// cache entry (key CacheKey), which the cache owns; it is true when caching is disabled
// (c.MaxBytes 0), and the caller then owns dir and removes it. A nil c, or one without
// Dir, is a disabled cache under os.TempDir().
//
// The cache's limit holds: a snapshot whose raw size (m.Sizes) exceeds c.MaxBytes is an
// error wrapping cache.ErrTooLarge, and one that does not fit beside the entries in use
// an error wrapping cache.ErrNoRoom, both before anything is downloaded.
//
// On error nothing is left behind but a cache entry that was complete before ctx ended
// (another restore may be reading it). A ctx that ends at any point, even as the
// download completes, is an error wrapping ctx.Err(). A corrupt snapshot (an error
// wrapping storage.ErrCorrupt) is marked failed in the store, with a context that
// outlives ctx, so that no lookup picks it again; the returned error still wraps
// storage.ErrCorrupt and says whether the mark succeeded.
func (r *Repo) Fetch(ctx context.Context, c *cache.Cache, m *manifest.Manifest) (dir string, private bool, err error) {
	if c == nil || c.Dir == "" {
		c = &cache.Cache{Dir: os.TempDir()}
	}
	raw, _ := m.Sizes()
	dir, cached, err := c.Fill(CacheKey(r.Store.URL(""), m), raw, func(tmp string) error { return r.Download(ctx, m, tmp) })
	if err == nil && ctx.Err() != nil {
		// Cancelled as the download completed: nobody would use or remove a private copy.
		if !cached {
			os.RemoveAll(dir)
		}
		err = ctx.Err()
	}
	if err == nil {
		return dir, !cached, nil
	}
	return "", false, r.fetchError(ctx, m, err)
}

// fetchError is the error of a failed fetch of m: a corrupt snapshot is marked failed in
// the store first, with a context that outlives ctx (see Fetch).
func (r *Repo) fetchError(ctx context.Context, m *manifest.Manifest, err error) error {
	id := m.Namespace + "/" + m.UUID
	switch {
	case errors.Is(err, cache.ErrTooLarge), errors.Is(err, cache.ErrNoRoom):
		return fmt.Errorf("snapshot %s not downloaded: %w", id, err)
	case errors.Is(err, storage.ErrCorrupt):
		if merr := r.markCorrupt(ctx, m, err); merr != nil {
			return fmt.Errorf("snapshot %s is corrupt (could not mark it failed: %v): %w", id, merr, err)
		}
		return fmt.Errorf("snapshot %s is corrupt (marked failed): %w", id, err)
	default:
		return fmt.Errorf("download of snapshot %s failed: %w", id, err)
	}
}

// markCorrupt marks m failed because of err, within markFailedTimeout even when ctx
// ended.
func (r *Repo) markCorrupt(ctx context.Context, m *manifest.Manifest, err error) error {
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), markFailedTimeout)
	defer cancel()
	return r.MarkFailed(mctx, m, "data corrupt: "+err.Error())
}
