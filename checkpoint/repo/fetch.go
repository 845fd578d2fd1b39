package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
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
// only reads it.
func (r *Repo) Cached(c *cache.Cache, m *manifest.Manifest) (dir string, ok bool) {
	return c.Get(m.UUID)
}

// Fetch downloads and verifies m's files (Download) into the node cache c and returns
// the directory holding the image files (checkpoint.img, ...). private is false for a
// cache entry, which the cache owns; it is true when caching is disabled (c.MaxBytes 0),
// and the caller then owns dir and removes it. A nil c, or one without Dir, is a
// disabled cache under os.TempDir().
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
	id := m.Namespace + "/" + m.UUID
	dir, cached, err := c.Fill(m.UUID, func(tmp string) error { return r.Download(ctx, m, tmp) })
	if err == nil && ctx.Err() != nil {
		// Cancelled as the download completed: nobody would use or remove a private copy.
		if !cached {
			os.RemoveAll(dir)
		}
		err = ctx.Err()
	}
	switch {
	case err == nil:
		return dir, !cached, nil
	case errors.Is(err, storage.ErrCorrupt):
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), markFailedTimeout)
		defer cancel()
		if merr := r.MarkFailed(mctx, m, err.Error()); merr != nil {
			return "", false, fmt.Errorf("snapshot %s is corrupt (could not mark it failed: %v): %w", id, merr, err)
		}
		return "", false, fmt.Errorf("snapshot %s is corrupt (marked failed): %w", id, err)
	default:
		return "", false, fmt.Errorf("download of snapshot %s failed: %w", id, err)
	}
}
