package repo

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/storage"
	_ "github.com/podsnapshot/podsnapshot/storage/local"
)

var here = compat.New("runsc-A", map[string]string{"platform": "systrap"}, "amd64", []string{"sse2"}, nil)

func newRepo(t *testing.T) *Repo {
	t.Helper()
	st, err := storage.Open(context.Background(), "file://"+t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &Repo{Store: st}
}

func imageDir(t *testing.T, fill byte) string {
	t.Helper()
	dir := t.TempDir()
	for i, f := range ImageFiles {
		data := bytes.Repeat([]byte{fill + byte(i)}, 100_000+i)
		if err := os.WriteFile(filepath.Join(dir, f.Local), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func commit(t *testing.T, r *Repo, key string, tuple compat.Tuple, created time.Time, fill byte) *manifest.Manifest {
	t.Helper()
	m := manifest.New("ns", "pol", key, tuple, created)
	if err := r.Commit(context.Background(), m, imageDir(t, fill)); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return m
}

func TestCommitFindDownload(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	key := strings.Repeat("a", 64)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	commit(t, r, key, here, t0, 1)
	newer := commit(t, r, key, here, t0.Add(time.Hour), 7)
	commit(t, r, strings.Repeat("b", 64), here, t0.Add(2*time.Hour), 9) // other key

	m, why, err := r.Find(ctx, "ns", "pol", key, here)
	if err != nil || m == nil {
		t.Fatalf("Find = %v, %q, %v", m, why, err)
	}
	if m.UUID != newer.UUID {
		t.Fatalf("Find returned %s, want the newest %s", m.UUID, newer.UUID)
	}
	dir := t.TempDir()
	if err := r.Download(ctx, m, dir); err != nil {
		t.Fatal(err)
	}
	for i, f := range ImageFiles {
		got, _ := os.ReadFile(filepath.Join(dir, f.Local))
		if !bytes.Equal(got, bytes.Repeat([]byte{7 + byte(i)}, 100_000+i)) {
			t.Fatalf("%s differs after download", f.Local)
		}
	}
}

func TestFindReasons(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	key := strings.Repeat("c", 64)
	if m, why, err := r.Find(ctx, "ns", "pol", key, here); m != nil || err != nil || !strings.Contains(why, "no snapshot for key cccc") {
		t.Fatalf("empty store: Find = %v, %q, %v", m, why, err)
	}
	other := here
	other.RunscVersion = "runsc-B"
	commit(t, r, key, other, time.Now(), 1)
	m, why, err := r.Find(ctx, "ns", "pol", key, here)
	if m != nil || err != nil || !strings.Contains(why, "runsc-B") || !strings.Contains(why, "runsc-A") {
		t.Fatalf("incompatible: Find = %v, %q, %v", m, why, err)
	}
}

func TestMarkerWithoutManifestIsIgnored(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	key := strings.Repeat("d", 64)
	good := commit(t, r, key, here, time.Now(), 1)
	abandoned := commit(t, r, key, here, time.Now().Add(time.Minute), 2)
	if err := r.Store.Delete(ctx, abandoned.ObjectName()); err != nil {
		t.Fatal(err)
	}
	m, _, err := r.Find(ctx, "ns", "pol", key, here)
	if err != nil || m == nil || m.UUID != good.UUID {
		t.Fatalf("Find = %v, %v; want %s", m, err, good.UUID)
	}
}

func TestCorruptObjectDetectedAndMarkedFailed(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	key := strings.Repeat("e", 64)
	m := commit(t, r, key, here, time.Now(), 3)
	corruptPages(t, r, m)
	err := r.Download(ctx, m, t.TempDir())
	if !errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), manifest.PagesFile) {
		t.Fatalf("Download error = %v, want ErrCorrupt naming %s", err, manifest.PagesFile)
	}
	if err := r.MarkFailed(ctx, m, err.Error()); err != nil {
		t.Fatal(err)
	}
	if got, why, _ := r.Find(ctx, "ns", "pol", key, here); got != nil {
		t.Fatalf("a failed snapshot was found again (%q)", why)
	}
	back, err := r.Get(ctx, "ns", "pol", m.UUID)
	if err != nil || back.State != manifest.StateFailed || !strings.Contains(back.Reason, "pages") {
		t.Fatalf("manifest after MarkFailed = %+v, %v", back, err)
	}
}

// corruptPages flips one byte of m's stored pages object (a local store's file).
func corruptPages(t *testing.T, r *Repo, m *manifest.Manifest) {
	t.Helper()
	pages := strings.TrimPrefix(r.Store.URL(manifest.ObjectName(m.Namespace, m.Policy, m.UUID, manifest.PagesFile)), "file://")
	data, err := os.ReadFile(pages)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(pages, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestListAndDelete(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	key := strings.Repeat("f", 64)
	a := commit(t, r, key, here, time.Now(), 1)
	commit(t, r, key, here, time.Now().Add(time.Second), 2)
	ms, errs, err := r.List(ctx, "ns")
	if err != nil || len(errs) != 0 || len(ms) != 2 {
		t.Fatalf("List = %d manifests, %v, %v", len(ms), errs, err)
	}
	if err := r.Delete(ctx, a); err != nil {
		t.Fatal(err)
	}
	left, err := r.Store.List(ctx, a.Dir()+"/")
	if err != nil || len(left) != 0 {
		t.Fatalf("objects left after Delete: %v, %v", left, err)
	}
	ms, _, _ = r.List(ctx, "")
	if len(ms) != 1 {
		t.Fatalf("List after Delete = %d manifests, want 1", len(ms))
	}
}

func TestCommitFailureLeavesNothing(t *testing.T) {
	r := newRepo(t)
	m := manifest.New("ns", "pol", strings.Repeat("0", 64), here, time.Now())
	err := r.Commit(context.Background(), m, filepath.Join(t.TempDir(), "missing"))
	if err == nil {
		t.Fatal("Commit of a missing directory succeeded")
	}
	objs, _ := r.Store.List(context.Background(), "")
	if len(objs) != 0 {
		t.Fatalf("objects left after a failed commit: %v", objs)
	}
}

func TestOrphans(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	key := strings.Repeat("9", 64)
	kept := commit(t, r, key, here, time.Now(), 1)
	gone := commit(t, r, key, here, time.Now().Add(time.Second), 2)
	// An upload that died before its manifest: files and marker without a manifest.
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(r.Store.Delete(ctx, gone.ObjectName()))

	if o, err := r.Orphans(ctx, "", time.Now().Add(-time.Hour)); err != nil || len(o) != 0 {
		t.Fatalf("young leftovers must be left alone (an upload may be in progress): %v, %v", o, err)
	}
	orphans, err := r.Orphans(ctx, "ns", time.Now().Add(time.Hour))
	must(err)
	if len(orphans) != 4 { // 3 image files and the index marker
		t.Fatalf("orphans = %v, want the 3 files and the marker of %s", orphans, gone.UUID)
	}
	for _, o := range orphans {
		if !strings.Contains(o.Name, gone.UUID) {
			t.Fatalf("%s is not an orphan (it belongs to %s)", o.Name, kept.UUID)
		}
	}
}

// A snapshot of a pod of several containers is indexed by its sandbox key, which is all
// a new pod's sandbox knows at Create; Find by the pod key does not see it.
func TestFindBySandboxKey(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	podKey, sandboxKey := strings.Repeat("d", 64), strings.Repeat("e", 64)
	m := manifest.New("ns", "pol", podKey, here, time.Now())
	m.SandboxKey = sandboxKey
	m.Containers = []manifest.ContainerKey{{Name: "app", Key: strings.Repeat("f", 64)}}
	if err := r.Commit(ctx, m, imageDir(t, 3)); err != nil {
		t.Fatal(err)
	}
	got, why, err := r.Find(ctx, "ns", "pol", sandboxKey, here)
	if err != nil || got == nil || got.UUID != m.UUID || len(got.Containers) != 1 || got.Containers[0].Name != "app" {
		t.Fatalf("Find by sandbox key = %+v, %q, %v", got, why, err)
	}
	if got, _, err := r.Find(ctx, "ns", "pol", podKey, here); got != nil || err != nil {
		t.Fatalf("Find by pod key = %+v, %v; want nothing", got, err)
	}
	if err := r.Delete(ctx, reread(t, r, m)); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := r.Find(ctx, "ns", "pol", sandboxKey, here); got != nil {
		t.Fatalf("deleted snapshot still found: %+v", got)
	}
}

func reread(t *testing.T, r *Repo, m *manifest.Manifest) *manifest.Manifest {
	t.Helper()
	g, err := r.Get(context.Background(), m.Namespace, m.Policy, m.UUID)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestMinRatioStoresIncompressibleRaw: with MinRatio, a file of random bytes is stored
// as it is (codec none, no ".zst") and a repetitive one with zstd; both download back.
func TestMinRatioStoresIncompressibleRaw(t *testing.T) {
	r := newRepo(t)
	r.MinRatio = 1.1
	ctx := context.Background()
	dir := t.TempDir()
	want := map[string][]byte{
		"checkpoint.img": bytes.Repeat([]byte("kernel state "), 10_000),
		"pages_meta.img": bytes.Repeat([]byte{1, 2, 3, 4}, 1000),
		"pages.img":      randomBytes(12 << 20),
	}
	for name, data := range want {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m := manifest.New("ns", "pol", strings.Repeat("c", 64), here, time.Now())
	if err := r.Commit(ctx, m, dir); err != nil {
		t.Fatal(err)
	}
	codecs := map[string]string{}
	for _, f := range m.Files {
		codecs[f.Name[strings.LastIndex(f.Name, "/")+1:]] = f.Codec
	}
	wantCodecs := map[string]string{"checkpoint.img.zst": "zstd", "pages_meta.img.zst": "zstd", "pages.img": "none"}
	if !maps.Equal(codecs, wantCodecs) {
		t.Fatalf("stored files %v, want %v", codecs, wantCodecs)
	}
	if err := m.Validate(); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	out := t.TempDir()
	if err := r.Download(ctx, m, out); err != nil {
		t.Fatal(err)
	}
	for name, data := range want {
		if got, _ := os.ReadFile(filepath.Join(out, name)); !bytes.Equal(got, data) {
			t.Errorf("%s differs after download", name)
		}
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{7}).Read(b)
	return b
}
