package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/storage"
)

// tenants is a store with tenant B's committed snapshot (namespace "b", policy "pol")
// and, under tenant A's prefix ("a/pol/"), what someone who can write there planted to
// reach B's snapshot: a copy of B's manifest (namespace b, B's UUID and files) at
// a/pol/<B's UUID>/manifest.json with an index marker for B's key, and a manifest of a
// fresh UUID under a/pol/ that says namespace b and B's UUID.
type tenants struct {
	r            *Repo
	b            *manifest.Manifest
	key          string
	bManifest    []byte // B's manifest object as committed
	copied, lies string // the planted manifests' object names
}

func plant(t *testing.T) *tenants {
	t.Helper()
	ctx := context.Background()
	r := newRepo(t)
	key := strings.Repeat("a", 64)
	b := manifest.New("b", "pol", key, here, time.Now())
	if err := r.Commit(ctx, b, imageDir(t, 5)); err != nil {
		t.Fatal(err)
	}
	data := readObject(t, r, b.ObjectName())
	tn := &tenants{r: r, b: b, key: key, bManifest: data,
		copied: manifest.ManifestName("a", "pol", b.UUID),
		lies:   manifest.ManifestName("a", "pol", manifest.NewUUID())}
	for _, name := range []string{tn.copied, tn.lies} {
		if _, err := r.Store.Put(ctx, name, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
	}
	marker := fmt.Sprintf("%s%020d-%s", keyPrefix("a", "pol", key), time.Now().UnixNano(), b.UUID)
	if _, err := r.Store.Put(ctx, marker, bytes.NewReader(nil)); err != nil {
		t.Fatal(err)
	}
	return tn
}

func readObject(t *testing.T, r *Repo, name string) []byte {
	t.Helper()
	rc, err := r.Store.Get(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(rc); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// intact fails the test unless B's manifest is byte for byte as committed and all of B's
// files are still there.
func (tn *tenants) intact(t *testing.T) {
	t.Helper()
	if got := readObject(t, tn.r, tn.b.ObjectName()); !bytes.Equal(got, tn.bManifest) {
		t.Fatalf("B's manifest was rewritten:\n%s", got)
	}
	for _, f := range tn.b.Files {
		if _, err := tn.r.Store.Stat(context.Background(), f.Name); err != nil {
			t.Fatalf("B's file %s: %v", f.Name, err)
		}
	}
}

// misplaced fails the test unless err wraps manifest.ErrMisplaced and names object and
// field.
func misplaced(t *testing.T, what string, err error, object, field string) {
	t.Helper()
	if !errors.Is(err, manifest.ErrMisplaced) || !strings.Contains(err.Error(), object) || !strings.Contains(err.Error(), field) {
		t.Fatalf("%s: error %v; want manifest.ErrMisplaced naming %s and %s", what, err, object, field)
	}
}

// TestManifestOfAnotherTenantIsRejected: lookups under A's prefix never return B's
// snapshot, so nothing restores B's bytes into A's pod, touches B's manifest or deletes
// B's files; List of A reports the planted manifests as errors.
func TestManifestOfAnotherTenantIsRejected(t *testing.T) {
	tn := plant(t)
	r, ctx := tn.r, context.Background()

	m, why, err := r.Find(ctx, "a", "pol", tn.key, here)
	if m != nil {
		t.Fatalf("Find under a/pol returned %s/%s (%q)", m.Namespace, m.UUID, why)
	}
	misplaced(t, "Find", err, tn.copied, "namespace")

	m, _, err = r.FindNamed(ctx, "a", "pol", tn.b.UUID, tn.key, here)
	if m != nil {
		t.Fatalf("FindNamed under a/pol returned %s/%s", m.Namespace, m.UUID)
	}
	misplaced(t, "FindNamed", err, tn.copied, "namespace")

	_, err = r.Get(ctx, "a", "pol", tn.b.UUID)
	misplaced(t, "Get", err, tn.copied, "namespace")

	ms, errs, err := r.List(ctx, "a")
	if err != nil || len(ms) != 0 || len(errs) != 2 {
		t.Fatalf("List(a) = %d manifests, errors %v, %v; want none and the 2 planted ones as errors", len(ms), errs, err)
	}
	for _, e := range errs {
		if !errors.Is(e, manifest.ErrMisplaced) {
			t.Fatalf("List(a): %v; want manifest.ErrMisplaced", e)
		}
	}
	ms, _, _ = r.List(ctx, "")
	if len(ms) != 1 || ms[0].ReadFrom != tn.b.ObjectName() {
		t.Fatalf("List() = %d manifests; want B's alone, read from %s", len(ms), tn.b.ObjectName())
	}
	tn.intact(t)
}

// TestRewriteAndDeleteOnlyWhereRead: Touch, MarkFailed, Download and Delete act on the
// object a manifest was read from; a manifest whose fields no longer match it (changed
// after the read) is refused with manifest.ErrMisplaced and nothing of B changes.
func TestRewriteAndDeleteOnlyWhereRead(t *testing.T) {
	tn := plant(t)
	r, ctx := tn.r, context.Background()
	// Tenant A's own snapshot, its manifest then made to name B.
	a := manifest.New("a", "pol", tn.key, here, time.Now())
	if err := r.Commit(ctx, a, imageDir(t, 1)); err != nil {
		t.Fatal(err)
	}
	got := reread(t, r, a)
	if got.ReadFrom != a.ObjectName() {
		t.Fatalf("ReadFrom = %q, want %q", got.ReadFrom, a.ObjectName())
	}
	got.Namespace, got.UUID, got.Files = "b", tn.b.UUID, tn.b.Files

	misplaced(t, "Touch", r.Touch(ctx, got), a.ObjectName(), "namespace")
	misplaced(t, "MarkFailed", r.MarkFailed(ctx, got, "data corrupt: x"), a.ObjectName(), "namespace")
	dir := t.TempDir()
	misplaced(t, "Download", r.Download(ctx, got, dir), a.ObjectName(), "namespace")
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("Download of a misplaced manifest wrote %d files", len(ents))
	}
	misplaced(t, "Delete", r.Delete(ctx, got), a.ObjectName(), "namespace")
	tn.intact(t)

	// Files of B listed by a manifest that is A's in every other field.
	own := reread(t, r, a)
	own.Files = tn.b.Files
	misplaced(t, "Download (B's files)", r.Download(ctx, own, t.TempDir()), a.ObjectName(), "files[0].name")

	// A's own snapshot still works, at its own place.
	own = reread(t, r, a)
	if err := r.Touch(ctx, own); err != nil {
		t.Fatal(err)
	}
	if err := r.Delete(ctx, own); err != nil {
		t.Fatal(err)
	}
	if left, _ := r.Store.List(ctx, a.Dir()+"/"); len(left) != 0 {
		t.Fatalf("A's objects left after Delete: %v", left)
	}
	tn.intact(t)
}

// TestDownloadRefusesWhatDoesNotFit: a snapshot whose raw size exceeds the free space
// of the target's filesystem (less 5%) is refused before anything is written, with an
// ErrNoSpace error naming the sizes, not ErrCorrupt; so is one whose declared sizes
// overflow int64 when summed.
func TestDownloadRefusesWhatDoesNotFit(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	m := commit(t, r, strings.Repeat("7", 64), here, time.Now(), 2)
	raw, _ := m.Sizes()

	defer func(f func(string) (int64, error)) { freeSpace = f }(freeSpace)
	freeSpace = func(string) (int64, error) { return raw, nil } // fits only without the reserve
	dir := t.TempDir()
	err := r.Download(ctx, m, dir)
	if !errors.Is(err, ErrNoSpace) || errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprint(raw)) {
		t.Fatalf("Download with %d bytes free = %v; want ErrNoSpace naming %d", raw, err, raw)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a refused download wrote %d files", len(ents))
	}
	freeSpace = func(string) (int64, error) { return raw + raw/10, nil }
	if err := r.Download(ctx, m, t.TempDir()); err != nil {
		t.Fatalf("Download with room for it: %v", err)
	}

	// Hostile sizes: each file claims 2^62 bytes, whose sum wraps around int64.
	freeSpace = func(string) (int64, error) { return 1 << 40, nil }
	for i := range m.Files {
		m.Files[i].RawSize = 1 << 62
	}
	err = r.Download(ctx, m, dir)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Download of 3 × 2^62 bytes = %v; want ErrNoSpace", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a refused download wrote %d files", len(ents))
	}
}

// TestDownloadRefusesMoreThanTheDisk: the real statfs; a manifest (valid, stored) whose
// pages claim an exabyte.
func TestDownloadRefusesMoreThanTheDisk(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	m := commit(t, r, strings.Repeat("8", 64), here, time.Now(), 2)
	m.Files[len(m.Files)-1].RawSize = 1 << 60
	// An unframed file: a frame list for an exabyte would not fit a manifest.
	m.Files[len(m.Files)-1].FrameSize, m.Files[len(m.Files)-1].Frames = 0, nil
	data, err := manifest.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Store.Put(ctx, m.ObjectName(), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	err = r.Download(ctx, reread(t, r, m), dir)
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Download of an exabyte = %v; want ErrNoSpace naming %s", err, dir)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a refused download wrote %d files", len(ents))
	}
}
