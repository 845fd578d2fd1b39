package repo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/cache"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/storage"
)

func TestFindNamed(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	key := strings.Repeat("a", 64)
	m := commit(t, r, key, here, time.Now(), 1)

	got, why, err := r.FindNamed(ctx, "ns", "pol", m.UUID, key, here)
	if err != nil || got == nil || got.UUID != m.UUID || why != "" {
		t.Fatalf("FindNamed = %v, %q, %v; want %s", got, why, err, m.UUID)
	}

	other := here
	other.RunscVersion = "runsc-B"
	failed := commit(t, r, key, here, time.Now(), 2)
	if err := r.MarkFailed(ctx, failed, "corrupt"); err != nil {
		t.Fatal(err)
	}
	missing := manifest.NewUUID()
	for _, tc := range []struct {
		name, uuid, key, want string
	}{
		{name: "missing", uuid: missing, key: key, want: "no snapshot named " + missing + " in file://"},
		{name: "missing names the policy", uuid: missing, key: key, want: "for policy ns/pol"},
		{name: "not a UUID", uuid: "../x", key: key, want: `snapshot name "../x" is not a UUID`},
		{name: "failed", uuid: failed.UUID, key: key, want: "snapshot ns/" + failed.UUID + " is Failed"},
		{name: "other spec", uuid: m.UUID, key: strings.Repeat("b", 64), want: "snapshot ns/" + m.UUID + " was taken from another pod spec"},
	} {
		got, why, err := r.FindNamed(ctx, "ns", "pol", tc.uuid, tc.key, here)
		if got != nil || err != nil || !strings.Contains(why, tc.want) {
			t.Errorf("%s: FindNamed = %v, %q, %v; want a reason containing %q", tc.name, got, why, err, tc.want)
		}
	}
	got, why, err = r.FindNamed(ctx, "ns", "pol", m.UUID, key, other)
	if got != nil || err != nil || !strings.HasPrefix(why, "incompatible snapshot ns/"+m.UUID+": ") || !strings.Contains(why, "runsc-B") {
		t.Errorf("incompatible: FindNamed = %v, %q, %v", got, why, err)
	}

	// A storage failure is an error, not a reason.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	broken := &Repo{Store: failingStore{r.Store}}
	if got, why, err := broken.FindNamed(cctx, "ns", "pol", m.UUID, key, here); got != nil || why != "" || err == nil || !strings.Contains(err.Error(), m.UUID) {
		t.Errorf("store failure: FindNamed = %v, %q, %v", got, why, err)
	}
}

// failingStore fails every Get.
type failingStore struct{ storage.Store }

func (failingStore) Get(context.Context, string) (io.ReadCloser, error) {
	return nil, errors.New("store down")
}

func TestFetchIntoCache(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	m := commit(t, r, strings.Repeat("a", 64), here, time.Now(), 4)
	c := &cache.Cache{Dir: t.TempDir(), MaxBytes: 1 << 30}
	if _, ok := r.Cached(c, m); ok {
		t.Fatal("Cached before Fetch")
	}
	dir, private, err := r.Fetch(ctx, c, m)
	if err != nil || private || dir != filepath.Join(c.Dir, CacheKey(r.Store.URL(""), m)) {
		t.Fatalf("Fetch = %q, %v, %v; want the cache entry", dir, private, err)
	}
	checkImage(t, dir, 4)
	if got, ok := r.Cached(c, m); !ok || got != dir {
		t.Fatalf("Cached = %q, %v; want %q", got, ok, dir)
	}
	// An entry cut short (a power loss before its pages were written back, or a local
	// store's object cut in place under its hard link) is discarded, not restored from.
	if err := os.Truncate(filepath.Join(dir, "pages.img"), 10); err != nil {
		t.Fatal(err)
	}
	if got, ok := r.Cached(c, m); ok {
		t.Fatalf("Cached of a truncated entry = %q", got)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the truncated entry is still there: %v", err)
	}
}

// Issue 14 item 1: the node cache was keyed by UUID alone, so a manifest of another store
// reusing a UUID was served the first one's files without a download.
func TestCacheKeyedByStoreAndFiles(t *testing.T) {
	ctx := context.Background()
	a, b := newRepo(t), newRepo(t)
	c := &cache.Cache{Dir: t.TempDir(), MaxBytes: 1 << 30}
	ma := commit(t, a, strings.Repeat("a", 64), here, time.Now(), 4)
	if _, _, err := a.Fetch(ctx, c, ma); err != nil {
		t.Fatal(err)
	}
	mb := manifest.New("ns", "pol", strings.Repeat("a", 64), here, time.Now())
	mb.UUID = ma.UUID
	if err := b.Commit(ctx, mb, imageDir(t, 9)); err != nil {
		t.Fatal(err)
	}
	if dir, ok := b.Cached(c, mb); ok {
		t.Fatalf("a manifest of another store reusing UUID %s got the cache entry %s", ma.UUID, dir)
	}
	dir, _, err := b.Fetch(ctx, c, mb)
	if err != nil {
		t.Fatal(err)
	}
	checkImage(t, dir, 9)

	// Every part of the identity changes the key.
	base := CacheKey("file:///s", ma)
	for name, change := range map[string]func(m *manifest.Manifest) string{
		"store":     func(m *manifest.Manifest) string { return CacheKey("file:///t", m) },
		"namespace": func(m *manifest.Manifest) string { m.Namespace = "other"; return CacheKey("file:///s", m) },
		"policy":    func(m *manifest.Manifest) string { m.Policy = "other"; return CacheKey("file:///s", m) },
		"uuid":      func(m *manifest.Manifest) string { m.UUID = manifest.NewUUID(); return CacheKey("file:///s", m) },
		"checksum": func(m *manifest.Manifest) string {
			m.Files[0].XXH64 = "0000000000000000"
			return CacheKey("file:///s", m)
		},
		"crc":  func(m *manifest.Manifest) string { m.Files[0].CRC32C++; return CacheKey("file:///s", m) },
		"size": func(m *manifest.Manifest) string { m.Files[0].RawSize++; return CacheKey("file:///s", m) },
	} {
		m := reread(t, a, ma)
		if got := change(m); got == base || !cache.ValidKey(got) {
			t.Errorf("%s: key %s (base %s)", name, got, base)
		}
	}
	if again := CacheKey("file:///s", reread(t, a, ma)); again != base {
		t.Errorf("key not stable: %s, %s", again, base)
	}
}

// Issue 14 items 2 and 4: a snapshot larger than the cache limit is refused before
// anything is downloaded (the store below fails every Get) and is not marked failed.
func TestFetchRefusesSnapshotLargerThanCache(t *testing.T) {
	r := newRepo(t)
	m := commit(t, r, strings.Repeat("a", 64), here, time.Now(), 4)
	raw, _ := m.Sizes()
	c := &cache.Cache{Dir: t.TempDir(), MaxBytes: raw - 1}
	broken := &Repo{Store: failingStore{r.Store}}
	_, _, err := broken.Fetch(context.Background(), c, m)
	if !errors.Is(err, cache.ErrTooLarge) || !strings.Contains(err.Error(), m.UUID) {
		t.Fatalf("Fetch of a snapshot over the cache limit: %v", err)
	}
	if back := reread(t, r, m); back.State != manifest.StateCommitted {
		t.Fatalf("a refused fetch changed the snapshot: %s", back.State)
	}
	if left, _ := os.ReadDir(c.Dir); len(left) != 0 {
		t.Fatalf("files left in %s: %v", c.Dir, left)
	}
}

func TestFetchPrivate(t *testing.T) {
	r := newRepo(t)
	m := commit(t, r, strings.Repeat("a", 64), here, time.Now(), 5)
	for _, c := range []*cache.Cache{{Dir: t.TempDir()}, nil} {
		dir, private, err := r.Fetch(context.Background(), c, m)
		if err != nil || !private {
			t.Fatalf("Fetch with cache %+v = %q, %v, %v; want a private directory", c, dir, private, err)
		}
		checkImage(t, dir, 5)
		if _, ok := r.Cached(c, m); ok {
			t.Fatal("a disabled cache holds an entry")
		}
		os.RemoveAll(dir)
	}
}

// A fetch cancelled before it starts, or as it completes, leaves no files.
func TestFetchCancelled(t *testing.T) {
	r := newRepo(t)
	m := commit(t, r, strings.Repeat("a", 64), here, time.Now(), 6)
	c := &cache.Cache{Dir: t.TempDir()}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := r.Fetch(ctx, c, m); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Fetch: %v", err)
	}
	expectEmpty(t, c.Dir)

	// The race: the context ends once every file is read in full, as Download returns.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	var closed atomic.Int32
	late := &Repo{Store: onClose{r.Store, func() {
		if int(closed.Add(1)) == len(m.Files) {
			cancel()
		}
	}}}
	if _, _, err := late.Fetch(ctx, c, m); !errors.Is(err, context.Canceled) {
		t.Fatalf("Fetch cancelled at its end: %v", err)
	}
	expectEmpty(t, c.Dir)
	if back := reread(t, r, m); back.State != manifest.StateCommitted {
		t.Fatalf("a cancelled fetch changed the snapshot: %s", back.State)
	}
}

// onClose calls hook after a downloaded object was read and closed.
type onClose struct {
	storage.Store
	hook func()
}

func (s onClose) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	rc, err := s.Store.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	return closeHook{rc, s.hook}, nil
}

type closeHook struct {
	io.ReadCloser
	hook func()
}

func (c closeHook) Close() error {
	err := c.ReadCloser.Close()
	c.hook()
	return err
}

func TestFetchCorruptMarksFailed(t *testing.T) {
	r := newRepo(t)
	key := strings.Repeat("e", 64)
	m := commit(t, r, key, here, time.Now(), 3)
	corruptPages(t, r, m)
	c := &cache.Cache{Dir: t.TempDir(), MaxBytes: 1 << 30}
	_, _, err := r.Fetch(context.Background(), c, reread(t, r, m))
	if !errors.Is(err, storage.ErrCorrupt) || !strings.Contains(err.Error(), "marked failed") {
		t.Fatalf("Fetch of a corrupt snapshot: %v", err)
	}
	expectEmpty(t, c.Dir)
	back := reread(t, r, m)
	if back.State != manifest.StateFailed || !strings.Contains(back.Reason, "pages") {
		t.Fatalf("manifest after the corrupt fetch: %s %q", back.State, back.Reason)
	}
	if got, _, _ := r.Find(context.Background(), "ns", "pol", key, here); got != nil {
		t.Fatal("a snapshot marked failed was found again")
	}
}

func checkImage(t *testing.T, dir string, fill byte) {
	t.Helper()
	for i, f := range ImageFiles {
		got, err := os.ReadFile(filepath.Join(dir, f.Local))
		if err != nil || !bytes.Equal(got, bytes.Repeat([]byte{fill + byte(i)}, 100_000+i)) {
			t.Fatalf("%s in %s: wrong content (%v)", f.Local, dir, err)
		}
	}
}

// expectEmpty fails unless dir holds nothing but the cache's lock file.
func expectEmpty(t *testing.T, dir string) {
	t.Helper()
	left, _ := os.ReadDir(dir)
	if len(left) == 1 && left[0].Name() == cache.LockFile {
		return
	}
	if len(left) != 0 {
		t.Fatalf("files left in %s: %v", dir, left)
	}
}

// A restore's access-time update from the manifest it read never brings back a snapshot
// that was marked Failed since (a corrupt frame found right after the restore).
func TestTouchKeepsFailed(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	m := commit(t, r, strings.Repeat("f", 64), here, time.Now(), 2)
	stale := reread(t, r, m)
	if err := r.MarkFailed(ctx, reread(t, r, m), "data corrupt: frame 3"); err != nil {
		t.Fatal(err)
	}
	if err := r.Touch(ctx, stale); err != nil {
		t.Fatal(err)
	}
	if back := reread(t, r, m); back.State != manifest.StateFailed || back.Reason != "data corrupt: frame 3" {
		t.Fatalf("after Touch of a stale copy: %s %q", back.State, back.Reason)
	}
	fresh := commit(t, r, strings.Repeat("f", 64), here, time.Now(), 3)
	if err := r.Touch(ctx, reread(t, r, fresh)); err != nil {
		t.Fatal(err)
	}
	if back := reread(t, r, fresh); back.State != manifest.StateCommitted || back.LastAccessTime.IsZero() {
		t.Fatalf("after Touch: %s, last access %v", back.State, back.LastAccessTime)
	}
}
