package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// setImage rewrites only the podsnapshot entry's newName and newTag, keeping comments
// and other entries; a file without the entry is an error and stays as it was.
func TestSetImage(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kustomization.yaml")
	in := "# keep me\nresources:\n- a.yaml\nimages:\n- name: other\n  newName: x/other\n  newTag: \"1\"\n- name: podsnapshot\n  newName: podsnapshot.local/podsnapshot\n  newTag: latest\n"
	if err := os.WriteFile(path, []byte(in), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := setImage(path, "10.0.0.1:5000/ps/podsnapshot", "v2"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	want := strings.Replace(strings.Replace(in, "podsnapshot.local/podsnapshot", "10.0.0.1:5000/ps/podsnapshot", 1), "newTag: latest", "newTag: v2", 1)
	if string(got) != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("images: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := setImage(bad, "r/p", "t"); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("a file without the entry: %v", err)
	}
	if b, _ := os.ReadFile(bad); string(b) != "images: []\n" {
		t.Fatalf("the bad file changed: %q", b)
	}
}

// The image has the four binaries in BinDir, executable, and podsnapshot-agent as its
// entrypoint.
func TestBuild(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{}
	for _, b := range []string{"containerd-shim-podsnapshot-v1", "podsnapshot-shimd", "podsnapshot", "podsnapshot-agent", "runsc"} {
		files[b] = filepath.Join(dir, b)
		if err := os.WriteFile(files[b], []byte("#!"+b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	img, err := build(files, "v9")
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.Entrypoint[0] != BinDir+"/podsnapshot-agent" || cf.Config.Labels["org.opencontainers.image.version"] != "v9" {
		t.Fatalf("config %+v", cf.Config)
	}
	layers, _ := img.Layers()
	if len(layers) != 1 {
		t.Fatalf("%d layers", len(layers))
	}
	d1, _ := img.Digest()
	again, _ := build(files, "v9")
	if d2, _ := again.Digest(); d1 != d2 {
		t.Fatalf("the same binaries gave two digests: %s, %s", d1, d2)
	}
	delete(files, "runsc")
	files["runsc"] = filepath.Join(dir, "missing")
	if _, err := build(files, "v9"); err == nil || !strings.Contains(err.Error(), "runsc") {
		t.Fatalf("a missing binary: %v", err)
	}
}
