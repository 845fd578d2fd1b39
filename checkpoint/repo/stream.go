package repo

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/containerd/log"

	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/stream"
	"github.com/podsnapshot/podsnapshot/storage"
)

// Stream starts restoring m while its pages arrive (stream.Open): it returns once
// checkpoint.img and pages_meta.img are on the node and verified, with the image
// directory runsc restores from mounted at mountDir; pages.img streams into the node
// cache c behind it (a nil c, or one without Dir, is a disabled cache under
// os.TempDir()). The caller closes the image when the pod is gone.
//
// Errors: one wrapping stream.ErrNotStreamable (m's pages are not framed: use Fetch) or
// stream.ErrNoFUSE (no FUSE here: use Fetch); otherwise as Fetch's, before the pod has
// read anything. A frame found corrupt after the pod resumed marks the snapshot failed
// in the store, so that later pods start cold; the pod itself cannot go back (it reads
// an I/O error and runsc stops the sandbox).
func (r *Repo) Stream(ctx context.Context, c *cache.Cache, m *manifest.Manifest, mountDir string) (*stream.Image, error) {
	if c == nil || c.Dir == "" {
		c = &cache.Cache{Dir: os.TempDir()}
	}
	id := m.Namespace + "/" + m.UUID
	if _, err := objectOf(m); err != nil {
		return nil, fmt.Errorf("download snapshot %s: %w", m.UUID, err)
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("download snapshot %s: %w", m.UUID, err)
	}
	if err := r.checkSpace(m, c.Dir); err != nil {
		return nil, fmt.Errorf("download snapshot %s: %w", id, err)
	}
	src := stream.Source{
		Store:     r.Store,
		Files:     m.Files,
		LocalName: localName,
		Key:       CacheKey(r.Store.URL(""), m),
		Cache:     c,
		OnCorrupt: func(err error) {
			merr := r.markCorrupt(ctx, m, err)
			log.L.WithError(err).Errorf("podsnapshot: snapshot %s is corrupt; marked failed: %v (later pods start cold; the pod restored from it cannot go back to a cold start and stops when it reads the bad pages)",
				id, merr == nil)
		},
	}
	if r.HotFrames {
		name, _ := objectOf(m) // checked above
		loc, err := manifest.ParseName(name)
		if err != nil {
			return nil, fmt.Errorf("download snapshot %s: %w", m.UUID, err)
		}
		src.HotFrames = manifest.ObjectName(loc.Namespace, loc.Policy, loc.UUID, manifest.HotFramesFile)
		src.HotFramesCheck = func(ctx context.Context) error { return r.stillCommitted(ctx, m) }
	}
	img, err := stream.Open(ctx, src, mountDir)
	if err != nil {
		return nil, r.fetchError(ctx, m, err)
	}
	return img, nil
}

// stillCommitted returns nil when m's manifest is in the store and Committed: a hot-frame
// list written for a snapshot deleted meanwhile would be left behind by its deletion
// (which lists the directory once, after the manifest). Errors: the store's (wrapping
// storage.ErrNotFound for a deleted one), or one naming the state.
func (r *Repo) stillCommitted(ctx context.Context, m *manifest.Manifest) error {
	cur, err := r.stored(ctx, m)
	if err != nil {
		return err
	}
	if cur.State != manifest.StateCommitted {
		return fmt.Errorf("snapshot %s/%s is %s", m.Namespace, m.UUID, cur.State)
	}
	return nil
}

// ProbePages reads frame i of m's pages file (stored in frames) from the store and checks
// it, within ctx: whether the store answers for the bytes a restore of m would stream. It
// writes nothing but, as Fetch, marks a snapshot found corrupt failed. Errors: the
// store's, ctx's, or one wrapping storage.ErrCorrupt that says whether it was marked.
func (r *Repo) ProbePages(ctx context.Context, m *manifest.Manifest, i int) error {
	for _, f := range m.Files {
		if name, _ := localName(f.Name); name != stream.PagesFile || !f.Framed() {
			continue
		}
		x, err := storage.NewFrameIndex(f)
		if err != nil {
			return err
		}
		if i < 0 || i >= x.Len() {
			return fmt.Errorf("%s: no frame %d of %d", r.Store.URL(f.Name), i, x.Len())
		}
		err = storage.ReadFrames(ctx, r.Store, x, i, 1, nil, func(int, []byte) error { return nil })
		if errors.Is(err, storage.ErrCorrupt) {
			return r.fetchError(ctx, m, err)
		}
		return err
	}
	return fmt.Errorf("snapshot %s/%s: no framed pages file", m.Namespace, m.UUID)
}
