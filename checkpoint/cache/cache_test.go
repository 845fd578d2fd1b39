package cache

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func fill(size int) func(string) error {
	return func(dir string) error {
		return os.WriteFile(filepath.Join(dir, "pages.img"), make([]byte, size), 0o600)
	}
}

func TestFillGetAndEvict(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := &Cache{Dir: t.TempDir(), MaxBytes: 2500, Now: func() time.Time { return now }}
	if _, ok := c.Get("a"); ok {
		t.Fatal("empty cache returned an entry")
	}
	dirA, cached, err := c.Fill("a", fill(1000))
	if err != nil || !cached {
		t.Fatalf("Fill a = %q, %v, %v", dirA, cached, err)
	}
	if got, ok := c.Get("a"); !ok || got != dirA {
		t.Fatalf("Get a = %q, %v", got, ok)
	}
	now = now.Add(time.Hour)
	if _, _, err := c.Fill("b", fill(1000)); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Hour)
	// Over the limit: the least recently used (a) goes, b (used an hour ago) stays.
	if _, _, err := c.Fill("c", fill(1000)); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Get("a"); ok {
		t.Fatal("least recently used entry a was not evicted")
	}
	for _, id := range []string{"b", "c"} {
		if _, ok := c.Get(id); !ok {
			t.Fatalf("entry %s was evicted", id)
		}
	}
}

func TestRecentlyUsedEntriesAreNotEvicted(t *testing.T) {
	now := time.Now()
	c := &Cache{Dir: t.TempDir(), MaxBytes: 1500, Now: func() time.Time { return now }}
	c.Fill("a", fill(1000))
	now = now.Add(time.Minute) // a is within InUseGrace: a restore may be reading it
	c.Fill("b", fill(1000))
	if _, ok := c.Get("a"); !ok {
		t.Fatal("an entry in use was evicted")
	}
}

func TestFailedFillLeavesNothing(t *testing.T) {
	c := &Cache{Dir: t.TempDir(), MaxBytes: 1 << 20}
	_, _, err := c.Fill("x", func(dir string) error {
		os.WriteFile(filepath.Join(dir, "partial"), []byte("half"), 0o600)
		return errors.New("checksum mismatch")
	})
	if err == nil {
		t.Fatal("Fill succeeded")
	}
	left, _ := os.ReadDir(c.Dir)
	if len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}

func TestDisabledCacheHandsOverAPrivateDir(t *testing.T) {
	c := &Cache{Dir: t.TempDir()}
	dir, cached, err := c.Fill("x", fill(10))
	if err != nil || cached {
		t.Fatalf("Fill = %q, %v, %v", dir, cached, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pages.img")); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Get("x"); ok {
		t.Fatal("a disabled cache returned an entry")
	}
}
