package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/storage"
)

// TestGCTemps: the temporary files of uploads that died (here, in a local store) are
// listed by a dry run, deleted once older than --orphan-ttl, and left alone while young,
// with --orphan-ttl 0, and with -n (they do not say their namespace).
func TestGCTemps(t *testing.T) {
	f := newFixture(t)
	kept := f.commit("default", "web", time.Hour, 1)
	dead := filepath.Join(f.store, "default", "web", "0c1d2e3f-0000-4000-8000-000000000001", storage.TempPrefix+"-pages.img.zst-42")
	young := filepath.Join(f.snapshotDir(kept), storage.TempPrefix+"-manifest.json-7")
	for p, at := range map[string]time.Time{dead: now.Add(-2 * time.Hour), young: now.Add(-10 * time.Minute)} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("half an upload"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
	}
	url := "file://" + dead
	r := f.run("gc", "--dry-run").must(t)
	if !strings.Contains(r.stdout, "would delete "+url+": temporary object of an unfinished upload") ||
		!strings.Contains(r.stdout, "1 temporary objects to delete") || strings.Contains(r.stdout, young) {
		t.Errorf("dry run:\n%s", r.stdout)
	}
	for _, args := range [][]string{{"gc", "--orphan-ttl", "0"}, {"gc", "-n", "default"}} {
		if r := f.run(args...).must(t); !strings.Contains(r.stdout, "0 temporary objects deleted") {
			t.Errorf("%v:\n%s", args, r.stdout)
		}
	}
	if !exists(dead) {
		t.Fatal("deleted by a dry run, --orphan-ttl 0 or -n")
	}
	r = f.run("gc").must(t)
	if !strings.Contains(r.stdout, "deleted "+url+": temporary object") || !strings.Contains(r.stdout, "1 temporary objects deleted") {
		t.Errorf("gc:\n%s", r.stdout)
	}
	if exists(dead) || exists(filepath.Dir(dead)) {
		t.Error("the dead upload's temporary file, or its directory, is left")
	}
	if !exists(young) {
		t.Error("a young temporary file was deleted")
	}
}
