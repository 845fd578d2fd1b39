// Package repo keeps pod snapshots in an object store: it commits a checkpoint image
// directory as a snapshot (files first, manifest last), finds the newest committed and
// compatible snapshot for a key (Find) or the one a pod names (FindNamed), downloads and
// verifies one into the node cache (Fetch), applies a policy's retention rules
// (PlanRetention, ApplyRetention), and lists, marks and deletes them. The shim and
// `podsnapshot` both use these; neither repeats them.
//
// Layout (README.md, "Storage layout"), relative to the store root:
//
//	<namespace>/<policy>/<uuid>/checkpoint.img.zst, pages_meta.img.zst, pages.img.zst
//	                            (a file that does not compress, e.g. random memory, is
//	                            stored as it is, without ".zst": Repo.MinRatio)
//	<namespace>/<policy>/<uuid>/manifest.json          written last: the commit
//	<namespace>/<policy>/<uuid>/hot-frames.json        the frames a restore read first,
//	                                                   written by a later streaming restore
//	<namespace>/<policy>/keys/<key>/<nanos>-<uuid>     empty index marker, written before
//	                                                   the manifest
//
// The markers make a lookup list only the snapshots of one key, newest first by name;
// a marker whose manifest is missing or not committed is skipped, so a crash between the
// two writes leaves nothing visible.
package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/storage"
)

// ImageFiles are the files `runsc checkpoint --compression=none` writes into its image
// directory, and the object each is stored as. pages_meta.img and pages.img are absent
// when the sandbox has no application memory to save separately.
var ImageFiles = []struct{ Local, Object string }{
	{"checkpoint.img", manifest.CheckpointFile},
	{"pages_meta.img", manifest.PagesMetaFile},
	{"pages.img", manifest.PagesFile},
}

// Repo is the snapshots in one store.
type Repo struct {
	Store storage.Store
	// Codec compresses uploaded files; nil means zstd with default settings.
	Codec storage.Codec
	// MinRatio, when above 0, stores a file uncompressed (codec none, object name without
	// ".zst") when Codec's ratio on a sample of it (storage.SampleRatio) is below
	// MinRatio: compressing random or already-compressed memory costs CPU seconds per GB
	// and saves nothing, and an uncompressed file restores without decompression.
	MinRatio float64
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// HotFrames makes Stream read the snapshot's hot-frame list
	// (manifest.HotFramesFile) and fetch its frames first, or, without one, record the
	// frames the restored sandbox reads out of order and store the list (config
	// hot_frames).
	HotFrames bool

	// rewriteMu serializes this Repo's manifest rewrites (MarkFailed, Touch), so that a
	// restore's access-time update never puts back the Committed state a corrupt-frame
	// finding of the same restore has just replaced.
	rewriteMu sync.Mutex
}

func (r *Repo) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Repo) codec() storage.Codec {
	if r.Codec != nil {
		return r.Codec
	}
	return storage.Zstd{}
}

func keyPrefix(namespace, policy, key string) string {
	return manifest.PolicyPrefix(namespace, policy) + "keys/" + key + "/"
}

// Commit uploads the image files in dir as snapshot m (m.Files is filled in), then
// writes the index marker and, last, the manifest with state Committed. On error nothing
// is visible: uploaded files are deleted (best effort) and no manifest exists. dir is
// left as it is; the caller removes it once Commit returned nil.
func (r *Repo) Commit(ctx context.Context, m *manifest.Manifest, dir string) error {
	m.Files = m.Files[:0]
	var uploaded []string
	fail := func(err error) error {
		for _, name := range uploaded {
			_ = r.Store.Delete(context.WithoutCancel(ctx), name)
		}
		return err
	}
	files, err := commitFiles(m, dir)
	if err != nil {
		return fail(fmt.Errorf("commit snapshot %s: %w", m.UUID, err))
	}
	for _, f := range files {
		src, err := os.Open(filepath.Join(dir, f.Local))
		if errors.Is(err, os.ErrNotExist) && f.Local != "checkpoint.img" && !m.RootfsOnly() {
			continue
		}
		if err != nil {
			return fail(fmt.Errorf("commit snapshot %s: %w", m.UUID, err))
		}
		// The image may come from disk (runsc saves the pages with O_DIRECT): ask for
		// a larger read-ahead.
		_ = unix.Fadvise(int(src.Fd()), 0, 0, unix.FADV_SEQUENTIAL)
		codec, object, err := r.chooseCodec(src, f.Object)
		if err != nil {
			src.Close()
			return fail(fmt.Errorf("commit snapshot %s: %s: %w", m.UUID, src.Name(), err))
		}
		name := manifest.ObjectName(m.Namespace, m.Policy, m.UUID, object)
		info, err := r.store(ctx, name, src, codec)
		src.Close()
		if err != nil {
			return fail(fmt.Errorf("commit snapshot %s: %w", m.UUID, err))
		}
		uploaded = append(uploaded, name)
		m.Files = append(m.Files, info)
	}
	m.State = manifest.StateCommitted
	data, err := manifest.Encode(m)
	if err != nil {
		return fail(fmt.Errorf("commit snapshot %s: %w", m.UUID, err))
	}
	marker := fmt.Sprintf("%s%020d-%s", keyPrefix(m.Namespace, m.Policy, m.IndexKey()), m.CreatedAt.UnixNano(), m.UUID)
	if _, err := r.Store.Put(ctx, marker, bytes.NewReader(nil)); err != nil {
		return fail(fmt.Errorf("commit snapshot %s: index marker: %w", m.UUID, err))
	}
	uploaded = append(uploaded, marker)
	if _, err := r.Store.PutIfAbsent(ctx, m.ObjectName(), bytes.NewReader(data)); err != nil {
		return fail(fmt.Errorf("commit snapshot %s: manifest: %w", m.UUID, err))
	}
	return nil
}

// imageFile is a file of an image directory and the object it is stored as.
type imageFile struct{ Local, Object string }

// commitFiles lists the files of image directory dir that Commit stores for m: the memory
// image (ImageFiles), or, for a rootfs-only snapshot, every "rootfs-<container>.tar" in
// dir (sorted), one root file system layer per container; dir without one is an error.
func commitFiles(m *manifest.Manifest, dir string) ([]imageFile, error) {
	if !m.RootfsOnly() {
		out := make([]imageFile, len(ImageFiles))
		for i, f := range ImageFiles {
			out[i] = imageFile(f)
		}
		return out, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []imageFile
	for _, e := range entries {
		if c, ok := manifest.RootfsContainer(e.Name()); ok && e.Type().IsRegular() && !strings.HasSuffix(e.Name(), ".zst") {
			out = append(out, imageFile{e.Name(), manifest.RootfsFile(c)})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no root file system layer (%s) in %s", RootfsLocal("CONTAINER"), dir)
	}
	return out, nil
}

// RootfsLocal is the local file name of container's root file system layer in an image
// directory: "rootfs-<container>.tar", stored as manifest.RootfsFile.
func RootfsLocal(container string) string {
	return strings.TrimSuffix(manifest.RootfsFile(container), ".zst")
}

// store stores the image file src under name with codec, in frames. A file stored
// uncompressed in a store on its filesystem is adopted (storage.AdoptFramed: linked into
// place after one read for its checksums) instead of uploaded, which would write every
// byte a second time. runsc writes an image once: a workload-triggered sandbox keeps its
// image files open, but refuses every checkpoint after the first that succeeded, the one
// committed here.
func (r *Repo) store(ctx context.Context, name string, src *os.File, codec storage.Codec) (storage.FileInfo, error) {
	if codec.Name() == storage.CodecNone {
		info, ok, err := storage.AdoptFramed(ctx, r.Store, name, src.Name(), storage.DefaultFrameSize)
		if ok || err != nil {
			return info, err
		}
	}
	return storage.UploadFramed(ctx, r.Store, name, src, codec, storage.DefaultFrameSize)
}

// chooseCodec returns the codec for the image file f and the name of its object: object
// (".zst") with r's codec, or object without ".zst" and codec none where MinRatio says
// compression does not pay. It leaves f's offset at 0.
func (r *Repo) chooseCodec(f *os.File, object string) (storage.Codec, string, error) {
	codec := r.codec()
	if r.MinRatio <= 0 || codec.Name() == storage.CodecNone {
		return codec, object, nil
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, "", err
	}
	ratio, err := storage.SampleRatio(f, fi.Size(), codec)
	if err != nil {
		return nil, "", err
	}
	if ratio < r.MinRatio {
		return storage.None{}, strings.TrimSuffix(object, ".zst"), nil
	}
	return codec, object, nil
}

// Get reads the manifest of snapshot uuid of a policy. A manifest stored there that
// names another snapshot, or lists files outside its directory, is an error wrapping
// manifest.ErrMisplaced (see read).
func (r *Repo) Get(ctx context.Context, namespace, policy, uuid string) (*manifest.Manifest, error) {
	return r.read(ctx, manifest.ManifestName(namespace, policy, uuid))
}

// read reads and decodes the manifest at object name and checks it against name
// (manifest.CheckLocation): the store's layout is only as trustworthy as whoever may
// write under a prefix, and a manifest under one tenant's prefix must not name another's
// snapshot. The returned manifest's ReadFrom is name, where it is rewritten and deleted.
func (r *Repo) read(ctx context.Context, name string) (*manifest.Manifest, error) {
	rc, err := r.Store.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, manifest.MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", r.Store.URL(name), err)
	}
	m, err := manifest.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.Store.URL(name), err)
	}
	if err := m.CheckLocation(name); err != nil {
		return nil, fmt.Errorf("%s: %w", r.Store.URL(name), err)
	}
	m.ReadFrom = name
	return m, nil
}

// objectOf returns the object name of m's manifest: where it was read from (ReadFrom),
// or for a manifest built here (Commit) the name its fields give. Every rewrite, delete
// and download goes through it, so that none acts on a path that only the manifest's
// contents chose. It fails (manifest.ErrMisplaced) when m does not match that name: m was
// changed after it was read, or lists files outside its directory.
func objectOf(m *manifest.Manifest) (string, error) {
	name := m.ReadFrom
	if name == "" {
		name = m.ObjectName()
	}
	if err := m.CheckLocation(name); err != nil {
		return "", err
	}
	return name, nil
}

// Find returns the newest committed snapshot of (namespace, policy) indexed by key (its
// IndexKey) whose compatibility tuple matches here. When there is none it returns nil and
// the reason in words: "no snapshot for key K" (K shortened by manifest.ShortKey), or the
// incompatibility of the newest candidate. Store errors are returned as errors.
func (r *Repo) Find(ctx context.Context, namespace, policy, key string, here compat.Tuple) (*manifest.Manifest, string, error) {
	markers, err := r.Store.List(ctx, keyPrefix(namespace, policy, key))
	if err != nil {
		return nil, "", err
	}
	sort.Slice(markers, func(i, j int) bool { return markers[i].Name > markers[j].Name })
	firstReason := ""
	for _, mk := range markers {
		base := mk.Name[strings.LastIndex(mk.Name, "/")+1:]
		_, uuid, ok := strings.Cut(base, "-")
		if !ok || !manifest.IsUUID(uuid) {
			continue
		}
		m, err := r.Get(ctx, namespace, policy, uuid)
		if errors.Is(err, storage.ErrNotFound) {
			continue // marker of an abandoned or deleted snapshot
		}
		if err != nil {
			return nil, "", err
		}
		if m.State != manifest.StateCommitted || m.IndexKey() != key {
			continue // not a candidate: only an incompatibility is worth reporting
		}
		if why := unusable(m, key, here); why != "" {
			if firstReason == "" {
				firstReason = why
			}
			continue
		}
		return m, "", nil
	}
	if firstReason != "" {
		return nil, firstReason, nil
	}
	return nil, fmt.Sprintf("no snapshot for key %s", manifest.ShortKey(key)), nil
}

// FindNamed returns snapshot uuid of (namespace, policy), the one a pod names to restore
// from (annotation podsnapshot.gke.io/ps-name), when a pod whose sandbox key is
// sandboxKey can restore from it under here: committed, IndexKey equal to sandboxKey and
// a compatible tuple. Otherwise it returns nil and the reason in words, without the
// annotation (the caller adds it): "no snapshot named U in <store> for policy ns/p",
// "snapshot ns/U is Failed", "snapshot ns/U was taken from another pod spec",
// "incompatible snapshot ns/U: <reason>". Store errors are returned as errors.
func (r *Repo) FindNamed(ctx context.Context, namespace, policy, uuid, sandboxKey string, here compat.Tuple) (*manifest.Manifest, string, error) {
	if !manifest.IsUUID(uuid) {
		return nil, fmt.Sprintf("snapshot name %q is not a UUID", uuid), nil
	}
	m, err := r.Get(ctx, namespace, policy, uuid)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Sprintf("no snapshot named %s in %s for policy %s/%s", uuid, r.Store.URL(""), namespace, policy), nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("snapshot %s/%s: %w", namespace, uuid, err)
	}
	if why := unusable(m, sandboxKey, here); why != "" {
		return nil, why, nil
	}
	return m, "", nil
}

// unusable says why a pod whose sandbox key is key cannot restore from m under here, ""
// when it can.
func unusable(m *manifest.Manifest, key string, here compat.Tuple) string {
	id := m.Namespace + "/" + m.UUID
	switch {
	case m.State != manifest.StateCommitted:
		return fmt.Sprintf("snapshot %s is %s", id, m.State)
	case m.IndexKey() != key:
		return fmt.Sprintf("snapshot %s was taken from another pod spec", id)
	}
	if why := compat.Incompatible(m.Compat, here); why != "" {
		return fmt.Sprintf("incompatible snapshot %s: %s", id, why)
	}
	return ""
}

// Download fetches every file of m into dir under its local image name (checkpoint.img,
// ...), in parallel, verifying sizes and checksums. A corrupt object is an error wrapping
// storage.ErrCorrupt that names it; dir then holds unverified data and must be removed.
// Before writing anything it refuses, with an error wrapping ErrNoSpace, a snapshot whose
// raw size does not fit in the free space of dir's filesystem (checkSpace), and one whose
// files lie outside its own directory (manifest.ErrMisplaced).
func (r *Repo) Download(ctx context.Context, m *manifest.Manifest, dir string) error {
	if _, err := objectOf(m); err != nil {
		return fmt.Errorf("download snapshot %s: %w", m.UUID, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("download snapshot %s: %w", m.UUID, err)
	}
	if err := r.checkSpace(m, dir); err != nil {
		return fmt.Errorf("download snapshot %s/%s: %w", m.Namespace, m.UUID, err)
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, info := range m.Files {
		local, ok := localName(info.Name)
		if !ok {
			return fmt.Errorf("download snapshot %s: unexpected file %s", m.UUID, info.Name)
		}
		g.Go(func() error {
			return storage.DownloadFile(gctx, r.Store, info, filepath.Join(dir, local))
		})
	}
	return g.Wait()
}

// localName maps an object name to the image file it holds: ".../pages.img.zst"
// (zstd) and ".../pages.img" (stored uncompressed) are pages.img,
// ".../rootfs-main.tar.zst" is rootfs-main.tar.
func localName(object string) (string, bool) {
	base := object[strings.LastIndex(object, "/")+1:]
	if c, ok := manifest.RootfsContainer(base); ok {
		return RootfsLocal(c), true
	}
	for _, f := range ImageFiles {
		if f.Object == base || strings.TrimSuffix(f.Object, ".zst") == base {
			return f.Local, true
		}
	}
	return "", false
}

// MarkFailed rewrites m's manifest, as it is in the store now, with state Failed and
// reason, so lookups skip it and `podsnapshot ls` shows why. m itself is not changed (a
// restore finds a snapshot corrupt on its download's goroutine while the pod reads m).
// A manifest deleted meanwhile stays deleted. Like Touch it writes only where m was read
// from (objectOf).
func (r *Repo) MarkFailed(ctx context.Context, m *manifest.Manifest, reason string) error {
	r.rewriteMu.Lock()
	defer r.rewriteMu.Unlock()
	cur, err := r.stored(ctx, m)
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	cur.State, cur.Reason = manifest.StateFailed, reason
	return r.rewrite(ctx, cur)
}

// stored reads m's manifest as it is in the store now, from where m was read (objectOf).
func (r *Repo) stored(ctx context.Context, m *manifest.Manifest) (*manifest.Manifest, error) {
	name, err := objectOf(m)
	if err != nil {
		return nil, err
	}
	return r.read(ctx, name)
}

// Touch records that m was just used to restore a pod (lastAccessTime, for retention). It
// rewrites the manifest as it is in the store now, and leaves one that is no longer
// Committed (marked Failed since m was read) as it is: an access time must not bring a
// Failed snapshot back. (Between two shims a rewrite can still race: the store has no
// compare-and-swap here; the window is one read and one write.)
func (r *Repo) Touch(ctx context.Context, m *manifest.Manifest) error {
	r.rewriteMu.Lock()
	defer r.rewriteMu.Unlock()
	cur, err := r.stored(ctx, m)
	if err != nil {
		return err
	}
	if cur.State != manifest.StateCommitted {
		return nil
	}
	cur.LastAccessTime = r.now().UTC()
	m.LastAccessTime = cur.LastAccessTime
	return r.rewrite(ctx, cur)
}

func (r *Repo) rewrite(ctx context.Context, m *manifest.Manifest) error {
	name, err := objectOf(m)
	if err != nil {
		return err
	}
	data, err := manifest.Encode(m)
	if err != nil {
		return err
	}
	_, err = r.Store.Put(ctx, name, bytes.NewReader(data))
	return err
}

// List returns every snapshot manifest under namespace ("" for all namespaces), sorted
// by creation time. Objects that are not manifests are ignored; a manifest that cannot
// be read, or that names another snapshot than its location (manifest.ErrMisplaced), is
// reported in errs and skipped.
func (r *Repo) List(ctx context.Context, namespace string) (ms []*manifest.Manifest, errs []error, err error) {
	prefix := ""
	if namespace != "" {
		prefix = namespace + "/"
	}
	objs, err := r.Store.List(ctx, prefix)
	if err != nil {
		return nil, nil, err
	}
	for _, o := range objs {
		loc, perr := manifest.ParseName(o.Name)
		if perr != nil || loc.File != manifest.ManifestFile {
			continue
		}
		m, rerr := r.read(ctx, o.Name)
		if rerr != nil {
			errs = append(errs, rerr)
			continue
		}
		ms = append(ms, m)
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].CreatedAt.Before(ms[j].CreatedAt) })
	return ms, errs, nil
}

// Delete removes snapshot m: the manifest first (from then on the snapshot does not
// exist), then its files and index marker. Objects already gone are not errors. It
// deletes only under the directory m was read from (objectOf) and that policy's index.
func (r *Repo) Delete(ctx context.Context, m *manifest.Manifest) error {
	name, err := objectOf(m)
	if err != nil {
		return fmt.Errorf("delete snapshot %s: %w", m.UUID, err)
	}
	loc, err := manifest.ParseName(name)
	if err != nil {
		return err
	}
	if err := r.Store.Delete(ctx, name); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	objs, err := r.Store.List(ctx, manifest.Dir(loc.Namespace, loc.Policy, loc.UUID)+"/")
	if err != nil {
		return err
	}
	markers, err := r.Store.List(ctx, keyPrefix(loc.Namespace, loc.Policy, m.IndexKey()))
	if err != nil {
		return err
	}
	for _, mk := range markers {
		if strings.HasSuffix(mk.Name, "-"+loc.UUID) {
			objs = append(objs, mk)
		}
	}
	var errs []error
	for _, o := range objs {
		if err := r.Store.Delete(ctx, o.Name); err != nil && !errors.Is(err, storage.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Orphans returns the objects under namespace ("" for all) that belong to no snapshot
// and were last written before cutoff: files of a snapshot directory without a manifest
// (an upload that died with its shim) and index markers whose manifest is gone. Younger
// ones may be an upload in progress and are left alone.
func (r *Repo) Orphans(ctx context.Context, namespace string, cutoff time.Time) ([]storage.ObjectInfo, error) {
	prefix := ""
	if namespace != "" {
		prefix = namespace + "/"
	}
	objs, err := r.Store.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	// Snapshot directories that hold a manifest, as "<ns>/<policy>/<uuid>".
	committed := map[string]bool{}
	for _, o := range objs {
		if loc, err := manifest.ParseName(o.Name); err == nil && loc.File == manifest.ManifestFile {
			committed[manifest.Dir(loc.Namespace, loc.Policy, loc.UUID)] = true
		}
	}
	var orphans []storage.ObjectInfo
	for _, o := range objs {
		if !o.Updated.Before(cutoff) {
			continue
		}
		if loc, err := manifest.ParseName(o.Name); err == nil {
			if !committed[manifest.Dir(loc.Namespace, loc.Policy, loc.UUID)] {
				orphans = append(orphans, o)
			}
			continue
		}
		// An index marker: <ns>/<policy>/keys/<key>/<nanos>-<uuid>.
		parts := strings.Split(o.Name, "/")
		if len(parts) == 5 && parts[2] == "keys" {
			if _, uuid, ok := strings.Cut(parts[4], "-"); ok && manifest.IsUUID(uuid) && !committed[manifest.Dir(parts[0], parts[1], uuid)] {
				orphans = append(orphans, o)
			}
		}
	}
	return orphans, nil
}
