package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// imageRoot makes a temporary root with the /etc/fsinit files of the workloads image
// (see ociarchive.WorkloadsSpec), points root at it and returns it.
func imageRoot(t *testing.T) string {
	t.Helper()
	r := t.TempDir()
	for p, data := range map[string]string{
		deletePath:            "delete me\n",
		modifyPath:            "original\n",
		dirPath + "/a":        "a\n",
		dirPath + "/b":        "b\n",
		"etc/fsinit/.keep-me": "",
	} {
		p = filepath.Join(r, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := root
	root = r
	t.Cleanup(func() { root = old })
	return r
}

func TestFileSizes(t *testing.T) {
	for _, mib := range []int{0, 1, 3, 64} {
		var sum int64
		sizes := fileSizes(mib)
		for _, s := range sizes {
			sum += s
			if d := s - sizes[0]; d < -1 || d > 1 {
				t.Errorf("mib %d: sizes %v differ by more than a byte", mib, sizes)
			}
		}
		if sum != int64(mib)<<20 {
			t.Errorf("mib %d: sizes %v add up to %d", mib, sizes, sum)
		}
	}
}

// TestContent: the content is deterministic, differs between files, and any offset gives
// the same bytes as the whole file, aligned or not.
func TestContent(t *testing.T) {
	whole := make([]byte, 4096)
	contentFast(whole, 3, 0)
	again := make([]byte, 4096)
	content(again, 3, 0)
	if string(whole) != string(again) {
		t.Fatal("contentFast and content differ")
	}
	other := make([]byte, 4096)
	contentFast(other, 4, 0)
	if string(whole) == string(other) {
		t.Fatal("files 3 and 4 have the same content")
	}
	for _, off := range []int64{0, 1, 7, 8, 13, 4000} {
		for _, n := range []int{0, 1, 5, 8, 17, 96} {
			part := make([]byte, n)
			contentFast(part, 3, off)
			if string(part) != string(whole[off:off+int64(n)]) {
				t.Errorf("offset %d length %d: differs from the whole file", off, n)
			}
		}
	}
}

// TestSetupThenCheck runs both branches of the program: the set-up on an image-like root,
// then the checks, which must pass, and then fail for each kind of damage.
func TestSetupThenCheck(t *testing.T) {
	r := imageRoot(t)
	dir := filepath.Join(r, "data")

	// Before the set-up nothing is as the checks want it.
	for _, line := range check(dir, 1) {
		if !strings.Contains(line, " bad: ") {
			t.Errorf("before the set-up: %q, want bad", line)
		}
	}

	if err := setup(dir, 1, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, markerName)); err != nil {
		t.Fatalf("no marker: %v", err)
	}
	want := []string{"files ok", "deleted ok", "modified ok", "dir ok"}
	if got := check(dir, 1); !slices.Equal(got, want) {
		t.Fatalf("after the set-up: %q, want %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(r, "etc/fsinit/.keep-me")); err != nil {
		t.Errorf("set-up removed an unrelated file: %v", err)
	}

	// Wrong size for the -mib the checks are given.
	if got := check(dir, 2)[0]; !strings.HasPrefix(got, "files bad: ") || !strings.Contains(got, "size 131072, want 262144") {
		t.Errorf("check with another -mib: %q", got)
	}

	// Damage, one kind at a time.
	f5 := fileName(dir, 5)
	b, err := os.ReadFile(f5)
	if err != nil {
		t.Fatal(err)
	}
	b[1000] ^= 1
	must(t, os.WriteFile(f5, b, 0o644))
	must(t, os.WriteFile(filepath.Join(r, deletePath), []byte("back\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(r, modifyPath), []byte("original\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(r, dirPath, "a"), []byte("a\n"), 0o644))
	got := check(dir, 1)
	for i, prefix := range []string{
		"files bad: " + f5 + ": wrong content at byte 1000",
		"deleted bad: " + filepath.Join(r, deletePath) + " exists",
		`modified bad: ` + filepath.Join(r, modifyPath) + ` holds "original\n"`,
		"dir bad: " + filepath.Join(r, dirPath) + " holds [a c], want [c]",
	} {
		if !strings.HasPrefix(got[i], prefix) {
			t.Errorf("damaged: %q, want %q...", got[i], prefix)
		}
	}

	must(t, os.Remove(fileName(dir, 7)))
	must(t, os.Remove(filepath.Join(r, dirPath, "a")))
	must(t, os.WriteFile(filepath.Join(r, dirPath, "c"), []byte("x\n"), 0o644))
	got = check(dir, 1)
	if !strings.HasPrefix(got[0], "files bad: ") || !strings.HasPrefix(got[3], "dir bad: ") || !strings.Contains(got[3], `holds "x\n"`) {
		t.Errorf("damaged again: %q", got)
	}
}

// TestSetupNeedsImageFiles: without the image's /etc/fsinit files the set-up fails
// before it writes anything.
func TestSetupNeedsImageFiles(t *testing.T) {
	r := imageRoot(t)
	must(t, os.Remove(filepath.Join(r, modifyPath)))
	dir := filepath.Join(r, "data")
	err := setup(dir, 1, 0)
	if err == nil || !strings.Contains(err.Error(), "/"+modifyPath) {
		t.Fatalf("setup without %s: %v", modifyPath, err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("setup created %s before failing", dir)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
