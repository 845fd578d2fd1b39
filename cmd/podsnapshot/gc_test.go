package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/workdir"
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

// TestGCWorkDirs: the work dir of a pod whose shim died (its owner lock is free) is
// listed by a dry run and removed by gc; a live shim's (locked) and anything that is not
// a pod's work dir are left, and so is everything with -n.
func TestGCWorkDirs(t *testing.T) {
	f := newFixture(t)
	work := filepath.Join(f.dir, "work")
	live, err := workdir.Claim(filepath.Join(work, "k8s.io", "live"))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Release()
	dead, err := workdir.Claim(filepath.Join(work, "k8s.io", "dead"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dead.Path, "pages.img"), []byte("pod memory"), 0o600); err != nil {
		t.Fatal(err)
	}
	dead.Release()
	cache := filepath.Join(work, "cache", "entry")
	if err := os.MkdirAll(cache, 0o700); err != nil {
		t.Fatal(err)
	}
	r := f.run("gc", "--dry-run").must(t)
	if !strings.Contains(r.stdout, "would delete "+dead.Path+": work dir of a pod whose shim died") ||
		!strings.Contains(r.stdout, "1 work dirs of dead shims to delete") || strings.Contains(r.stdout, live.Path) {
		t.Errorf("dry run:\n%s", r.stdout)
	}
	if r := f.run("gc", "-n", "default").must(t); !strings.Contains(r.stdout, "0 work dirs of dead shims deleted") {
		t.Errorf("gc -n:\n%s", r.stdout)
	}
	if !exists(dead.Path) {
		t.Fatal("removed by a dry run or -n")
	}
	r = f.run("gc").must(t)
	if !strings.Contains(r.stdout, "deleted "+dead.Path+": work dir") || !strings.Contains(r.stdout, "1 work dirs of dead shims deleted") {
		t.Errorf("gc:\n%s", r.stdout)
	}
	if exists(dead.Path) || !exists(live.Path) || !exists(cache) {
		t.Errorf("after gc: dead %v, live %v, cache %v; want only the dead one gone", exists(dead.Path), exists(live.Path), exists(cache))
	}
}
