package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// key is a valid entry key derived from s.
func key(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func fill(size int) func(string) error {
	return func(dir string) error {
		return os.WriteFile(filepath.Join(dir, "pages.img"), make([]byte, size), 0o600)
	}
}

// held is what the cache counts against its limit: its entries and fill temporaries.
func held(t *testing.T, c *Cache) int64 {
	t.Helper()
	names, _ := os.ReadDir(c.Dir)
	var n int64
	for _, e := range names {
		if ValidKey(e.Name()) || strings.HasPrefix(e.Name(), fillPrefix) {
			n += dirSize(filepath.Join(c.Dir, e.Name()))
		}
	}
	return n
}

func TestFillGetAndEvict(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := &Cache{Dir: t.TempDir(), MaxBytes: 2500, Now: func() time.Time { return now }}
	a, b, cc := key("a"), key("b"), key("c")
	if _, ok := c.Get(a); ok {
		t.Fatal("empty cache returned an entry")
	}
	dirA, cached, err := c.Fill(a, 1000, fill(1000))
	if err != nil || !cached || dirA != filepath.Join(c.Dir, a) {
		t.Fatalf("Fill a = %q, %v, %v", dirA, cached, err)
	}
	if got, ok := c.Get(a); !ok || got != dirA {
		t.Fatalf("Get a = %q, %v", got, ok)
	}
	now = now.Add(time.Hour)
	if _, _, err := c.Fill(b, 1000, fill(1000)); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Hour)
	// Over the limit: the least recently used (a) goes, b (used an hour ago) stays.
	if _, _, err := c.Fill(cc, 1000, fill(1000)); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Get(a); ok {
		t.Fatal("least recently used entry a was not evicted")
	}
	for _, id := range []string{b, cc} {
		if _, ok := c.Get(id); !ok {
			t.Fatalf("entry %s was evicted", id)
		}
	}
	// A second fill of an entry that exists returns it without fetching.
	dir, cached, err := c.Fill(b, 1000, func(string) error { t.Fatal("fetched an entry that exists"); return nil })
	if err != nil || !cached || dir != filepath.Join(c.Dir, b) {
		t.Fatalf("Fill of an existing entry = %q, %v, %v", dir, cached, err)
	}
}

// Issue 14 item 4: a 1 MiB cache held 13 MiB after one 8 MiB fill.
func TestTooLargeIsRefusedBeforeFetching(t *testing.T) {
	c := &Cache{Dir: t.TempDir(), MaxBytes: 1 << 20}
	_, _, err := c.Fill(key("big"), 8<<20, func(string) error {
		t.Fatal("fetched a snapshot larger than the cache")
		return nil
	})
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "8388608 bytes") {
		t.Fatalf("Fill of 8 MiB into 1 MiB: %v", err)
	}
	if n := held(t, c); n != 0 {
		t.Fatalf("cache holds %d bytes", n)
	}
}

// Entries used within InUseGrace are not evicted; a fill that does not fit beside them
// is refused rather than exceeding the limit.
func TestLimitHeldWhenEntriesAreInUse(t *testing.T) {
	now := time.Now()
	c := &Cache{Dir: t.TempDir(), MaxBytes: 1500, Now: func() time.Time { return now }}
	if _, _, err := c.Fill(key("a"), 1000, fill(1000)); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute) // a is within InUseGrace: a restore may be reading it
	_, _, err := c.Fill(key("b"), 1000, func(string) error { t.Fatal("fetched without room"); return nil })
	if !errors.Is(err, ErrNoRoom) {
		t.Fatalf("Fill beside an entry in use: %v", err)
	}
	if _, ok := c.Get(key("a")); !ok {
		t.Fatal("an entry in use was evicted")
	}
	if n := held(t, c); n > c.MaxBytes {
		t.Fatalf("cache holds %d bytes, limit %d", n, c.MaxBytes)
	}
}

func TestLimitHeldAfterEveryFill(t *testing.T) {
	now := time.Now()
	c := &Cache{Dir: t.TempDir(), MaxBytes: 10_000, Now: func() time.Time { return now }}
	for i, size := range []int{3000, 4000, 2500, 9000, 100, 5000, 9936, 1, 4000} {
		now = now.Add(InUseGrace + time.Second)
		if _, _, err := c.Fill(key(string(rune('a'+i))), int64(size), fill(size)); err != nil {
			t.Fatalf("fill %d of %d bytes: %v", i, size, err)
		}
		if n := held(t, c); n > c.MaxBytes {
			t.Fatalf("after fill %d the cache holds %d bytes, limit %d", i, n, c.MaxBytes)
		}
	}
}

// A fill in progress counts at its reservation.
func TestFillsInProgressCount(t *testing.T) {
	c := &Cache{Dir: t.TempDir(), MaxBytes: 1500}
	_, _, err := c.Fill(key("a"), 1000, func(dir string) error {
		_, _, err := c.Fill(key("b"), 1000, fill(1000))
		if !errors.Is(err, ErrNoRoom) {
			t.Errorf("Fill beside a fill in progress: %v", err)
		}
		return fill(1000)(dir)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestFillWritingMoreThanDeclaredFails(t *testing.T) {
	c := &Cache{Dir: t.TempDir(), MaxBytes: 1 << 20}
	if _, _, err := c.Fill(key("a"), 10, fill(1000)); err == nil || !strings.Contains(err.Error(), "1000 bytes, 10 were declared") {
		t.Fatalf("Fill that wrote too much: %v", err)
	}
	if n := held(t, c); n != 0 {
		t.Fatalf("cache holds %d bytes", n)
	}
}

// Issue 14 item 3: with cache_dir equal to work_dir, eviction deleted a live sandbox's
// checkpoint image. The cache evicts, counts and serves only what it made.
func TestEvictsOnlyItsOwnEntries(t *testing.T) {
	now := time.Now()
	c := &Cache{Dir: t.TempDir(), MaxBytes: 1500, Now: func() time.Time { return now }}
	old := now.Add(-24 * time.Hour)
	foreign := []string{
		"k8s.io/" + key("sandbox") + "/checkpoint/pages.img", // a sandbox's image
		key("no marker") + "/pages.img",                      // named like an entry, no marker
		key("wrong marker") + "/" + EntryMarker,              // a marker of another key
		".fill-leftover/pages.img",                           // not the cache's temporary form
		"notes.txt",
	}
	for _, f := range foreign {
		p := filepath.Join(c.Dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, 1000), 0o600); err != nil {
			t.Fatal(err)
		}
		for q := p; q != c.Dir; q = filepath.Dir(q) {
			os.Chtimes(q, old, old)
		}
	}
	for i := range 3 {
		now = now.Add(time.Hour)
		if _, _, err := c.Fill(key(string(rune('a'+i))), 1000, fill(1000)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range foreign {
		if _, err := os.Stat(filepath.Join(c.Dir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if _, ok := c.Get(key("no marker")); ok {
		t.Error("a directory the cache did not make was served")
	}
	if _, ok := c.Get(key("c")); !ok {
		t.Error("the last entry is missing")
	}
}

// A fill temporary nobody locks is a crashed fill's and goes; a locked one is a fill in
// progress (another shim's) and stays and counts.
func TestCrashedFillRemovedLiveFillKept(t *testing.T) {
	c := &Cache{Dir: t.TempDir(), MaxBytes: 1500}
	dead := filepath.Join(c.Dir, fillPrefix+key("dead")+"-1000-123")
	live := filepath.Join(c.Dir, fillPrefix+key("live")+"-1000-456")
	for _, d := range []string{dead, live} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		fill(1000)(d)
	}
	release, err := lockDir(live)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if _, _, err := c.Fill(key("a"), 100, fill(100)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("crashed fill left: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Fatalf("fill in progress removed: %v", err)
	}
	if _, _, err := c.Fill(key("b"), 1000, fill(1000)); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("Fill beside a fill in progress: %v", err)
	}
}

func TestFailedFillLeavesNothing(t *testing.T) {
	c := &Cache{Dir: t.TempDir(), MaxBytes: 1 << 20}
	_, _, err := c.Fill(key("x"), 4, func(dir string) error {
		os.WriteFile(filepath.Join(dir, "partial"), []byte("half"), 0o600)
		return errors.New("checksum mismatch")
	})
	if err == nil {
		t.Fatal("Fill succeeded")
	}
	left, _ := os.ReadDir(c.Dir)
	if len(left) != 1 || left[0].Name() != LockFile {
		t.Fatalf("left behind: %v", left)
	}
}

func TestInvalidKeyRefused(t *testing.T) {
	c := &Cache{Dir: t.TempDir(), MaxBytes: 1 << 20}
	for _, k := range []string{"", "../x", strings.ToUpper(key("a")), key("a")[:63]} {
		if _, _, err := c.Fill(k, 1, fill(1)); err == nil {
			t.Errorf("Fill(%q) succeeded", k)
		}
		if _, ok := c.Get(k); ok {
			t.Errorf("Get(%q) found an entry", k)
		}
	}
}

func TestDisabledCacheHandsOverAPrivateDir(t *testing.T) {
	c := &Cache{Dir: t.TempDir()}
	dir, cached, err := c.Fill(key("x"), 10, fill(10))
	if err != nil || cached {
		t.Fatalf("Fill = %q, %v, %v", dir, cached, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pages.img")); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Get(key("x")); ok {
		t.Fatal("a disabled cache returned an entry")
	}
	// An enabled cache sharing the directory leaves the private copy alone.
	on := &Cache{Dir: c.Dir, MaxBytes: 1 << 20}
	if _, _, err := on.Fill(key("y"), 10, fill(10)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pages.img")); err != nil {
		t.Fatalf("private copy removed: %v", err)
	}
}

// Concurrent fills (the shims of one node) of one key leave one entry; of many keys they
// never take the cache over its limit.
func TestConcurrentFills(t *testing.T) {
	c := &Cache{Dir: t.TempDir(), MaxBytes: 5000}
	done := make(chan error)
	for range 4 {
		go func() {
			dir, cached, err := c.Fill(key("same"), 1000, fill(1000))
			if err == nil && (!cached || dir != filepath.Join(c.Dir, key("same"))) {
				err = errors.New("not the entry: " + dir)
			}
			done <- err
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	for i := range 8 {
		go func() {
			_, _, err := c.Fill(key(string(rune('a'+i))), 1500, fill(1500))
			if errors.Is(err, ErrNoRoom) {
				err = nil
			}
			done <- err
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	if n := held(t, c); n > c.MaxBytes {
		t.Fatalf("cache holds %d bytes, limit %d", n, c.MaxBytes)
	}
	names, _ := os.ReadDir(c.Dir)
	for _, n := range names {
		if strings.HasPrefix(n.Name(), ".") && n.Name() != LockFile {
			t.Errorf("left behind: %s", n.Name())
		}
	}
}

// TestDiscardAndOldEntries: Discard removes an entry (a restore from it failed) and
// nothing else; entries of the former layout (named by snapshot UUID) are removed at the
// next fill instead of staying uncounted forever.
func TestDiscardAndOldEntries(t *testing.T) {
	c := &Cache{Dir: t.TempDir(), MaxBytes: 1 << 20}
	a, b := key("a"), key("b")
	for _, k := range []string{a, b} {
		if _, _, err := c.Fill(k, 100, fill(100)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Discard(a); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Get(a); ok {
		t.Fatal("a discarded entry is still served")
	}
	if _, ok := c.Get(b); !ok {
		t.Fatal("Discard removed another entry")
	}
	if err := c.Discard(key("none")); err != nil {
		t.Fatalf("discarding a missing entry: %v", err)
	}
	old := filepath.Join(c.Dir, "9e460700-1b2c-4d3e-8f90-0123456789ab")
	if err := os.MkdirAll(old, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(old, "pages.img"), make([]byte, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Fill(key("c"), 100, fill(100)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Fatalf("an entry of the former layout survived a fill: %v", err)
	}
}

// TestFillerAlive: a claimed fill's filler is alive until it releases its lock (as its
// process's death does), publishes or aborts; probing does not take the lock from it.
func TestFillerAlive(t *testing.T) {
	c := &Cache{Dir: t.TempDir(), MaxBytes: 1 << 20}
	claim, err := c.Claim(key("a"), 100)
	if err != nil || claim.Fill == nil {
		t.Fatalf("claim: %+v, %v", claim, err)
	}
	dir := claim.Fill.Dir
	if !c.FillerAlive(dir) || !c.FillerAlive(dir) {
		t.Fatal("a held fill's filler reported ended")
	}
	if other, err := c.Claim(key("a"), 100); err != nil || other.Filling != dir {
		t.Fatalf("after probing, a second claim is %+v, %v; want to share %s", other, err, dir)
	}
	claim.Fill.Release()
	if c.FillerAlive(dir) {
		t.Fatal("a released fill's filler reported alive")
	}
	if c.FillerAlive(filepath.Join(c.Dir, "gone")) {
		t.Fatal("a missing fill's filler reported alive")
	}
}
