package manifest

import (
	"errors"
	"strings"
	"testing"
)

// TestCheckLocation: a manifest matches the object it was read from only when its
// namespace, policy and UUID are those of the name and each file is an image file of that
// directory; every mismatch names the object and the field.
func TestCheckLocation(t *testing.T) {
	const other = "11111111-2222-4333-8444-555555555555"
	name := ManifestName("default", "my-app", testUUID)
	if err := committed().CheckLocation(name); err != nil {
		t.Fatalf("CheckLocation of its own name: %v", err)
	}
	for _, tc := range []struct {
		what, name, field string
		edit              func(*Manifest)
	}{
		{"another namespace's prefix", ManifestName("tenant-a", "my-app", testUUID), "namespace", nil},
		{"another policy's prefix", ManifestName("default", "other", testUUID), "policy", nil},
		{"another UUID's directory", ManifestName("default", "my-app", other), "uuid", nil},
		{"a file of another snapshot", name, "files[1].name", func(m *Manifest) {
			m.Files[1].Name = ObjectName("default", "my-app", other, PagesMetaFile)
		}},
		{"a file that is no image file", name, "files[2].name", func(m *Manifest) {
			m.Files[2].Name = ObjectName("default", "my-app", testUUID, "secrets/pages.img.zst")
		}},
		{"not a manifest object", ObjectName("default", "my-app", testUUID, PagesFile), ManifestFile, nil},
	} {
		m := committed()
		if tc.edit != nil {
			tc.edit(m)
		}
		err := m.CheckLocation(tc.name)
		if !errors.Is(err, ErrMisplaced) || !strings.Contains(err.Error(), tc.name) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: CheckLocation(%s) = %v; want ErrMisplaced naming the object and %s", tc.what, tc.name, err, tc.field)
		}
	}
	if err := committed().CheckLocation("default/my-app/not-a-uuid/manifest.json"); err == nil {
		t.Error("CheckLocation of a name without a UUID: no error")
	}
}

// TestValidateImageFileNames: files are the image files, zstd or stored as they are;
// anything else in the snapshot's directory is invalid.
func TestValidateImageFileNames(t *testing.T) {
	m := committed()
	m.Files[2].Name = ObjectName("default", "my-app", testUUID, "pages.img")
	m.Files[2].Codec, m.Files[2].StoredSize = "none", m.Files[2].RawSize
	if err := m.Validate(); err != nil {
		t.Fatalf("uncompressed pages.img: %v", err)
	}
	for _, bad := range []string{"pages.bin", "sub/pages.img.zst", "checkpoint.img.zst.zst"} {
		m := committed()
		m.Files[0].Name = ObjectName("default", "my-app", testUUID, bad)
		if err := m.Validate(); err == nil || !strings.Contains(err.Error(), "files[0].name") {
			t.Errorf("file %q: Validate = %v; want an error for files[0].name", bad, err)
		}
	}
}
