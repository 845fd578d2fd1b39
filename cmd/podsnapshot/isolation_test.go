package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
)

// TestRmCannotReachAnotherTenant: a copy of namespace jobs' manifest planted under
// namespace default's prefix is not a snapshot of default: rm -n default of its UUID
// finds nothing and deletes nothing of jobs; ls and inspect warn about it.
func TestRmCannotReachAnotherTenant(t *testing.T) {
	f := newFixture(t)
	victim := f.commit("jobs", "batch", time.Hour, 3)
	data, err := os.ReadFile(filepath.Join(f.snapshotDir(victim), manifest.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	planted := manifest.ManifestName("default", "web", victim.UUID)
	if _, err := f.repo.Store.Put(context.Background(), planted, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}

	r := f.run("rm", "-n", "default", victim.UUID)
	if r.code == 0 || !strings.Contains(r.stderr, "not found") {
		t.Errorf("rm -n default %s: exit %d; want not found", victim.UUID, r.code)
	}
	if !strings.Contains(r.stderr, planted) || !strings.Contains(r.stderr, "namespace") {
		t.Errorf("rm: no warning naming the planted manifest %s:\n%s", planted, r.stderr)
	}
	for _, file := range victim.Files {
		if !exists(filepath.Join(f.store, filepath.FromSlash(file.Name))) {
			t.Fatalf("rm -n default deleted %s of namespace jobs", file.Name)
		}
	}
	if !exists(filepath.Join(f.snapshotDir(victim), manifest.ManifestFile)) {
		t.Fatal("rm -n default deleted the manifest of namespace jobs")
	}
	if r := f.run("inspect", "-n", "default", victim.UUID); r.code == 0 {
		t.Errorf("inspect -n default %s showed namespace jobs' snapshot:\n%s", victim.UUID, r.stdout)
	}
	// The victim itself is listed once, from its own place.
	r = f.run("ls", "-A").must(t)
	if n := strings.Count(r.stdout, victim.UUID); n != 1 {
		t.Errorf("ls -A lists %s %d times:\n%s", victim.UUID, n, r.stdout)
	}
}

// TestInspectCorruptSaysWhatWasFound: a snapshot marked failed by a fetch that found its
// data corrupt is not described as "no checkpoint has succeeded"; inspect shows the
// mismatch that was found.
func TestInspectCorruptSaysWhatWasFound(t *testing.T) {
	f := newFixture(t)
	m := f.commit("default", "web", time.Hour, 4)
	pages := filepath.Join(f.snapshotDir(m), manifest.PagesFile)
	data, err := os.ReadFile(pages)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(pages, data, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := f.repo.Get(context.Background(), "default", "web", m.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.repo.Fetch(context.Background(), nil, got); err == nil {
		t.Fatal("Fetch of a corrupt snapshot succeeded")
	}
	r := f.run("inspect", m.UUID).must(t)
	if strings.Contains(r.stdout, "no checkpoint has succeeded") {
		t.Errorf("inspect says no checkpoint succeeded:\n%s", r.stdout)
	}
	if !strings.Contains(r.stdout, "marked failed, not restored: ") || !strings.Contains(r.stdout, "mismatch") ||
		!strings.Contains(r.stdout, manifest.PagesFile) {
		t.Errorf("inspect does not say what was found in %s:\n%s", manifest.PagesFile, r.stdout)
	}
}
