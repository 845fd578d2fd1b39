package manifest

import (
	"errors"
	"fmt"
	"strings"
)

// ErrMisplaced is wrapped by CheckLocation's errors: a manifest that names another
// snapshot than the one whose location it was read from. Whoever can write under one
// namespace's or policy's prefix of a store could otherwise make lookups, restores,
// access-time updates and deletions under that prefix act on another tenant's snapshot.
var ErrMisplaced = errors.New("does not match where it is stored")

// CheckLocation checks m, read from object name (relative to the store root), against
// that name: name must be "<namespace>/<policy>/<uuid>/manifest.json" with m's
// Namespace, Policy and UUID, and every file m lists must be an image file of that same
// directory ("<namespace>/<policy>/<uuid>/" followed by a name IsImageFile accepts).
// The error names the object and the first field that differs, and wraps ErrMisplaced
// (or is ParseName's error for a name that is not a manifest's).
func (m *Manifest) CheckLocation(name string) error {
	loc, err := ParseName(name)
	if err != nil {
		return err
	}
	if loc.File != ManifestFile {
		return fmt.Errorf("manifest %s: %w: not a %s", name, ErrMisplaced, ManifestFile)
	}
	for _, f := range []struct{ field, got, want string }{
		{"namespace", m.Namespace, loc.Namespace},
		{"policy", m.Policy, loc.Policy},
		{"uuid", m.UUID, loc.UUID},
	} {
		if f.got != f.want {
			return fmt.Errorf("manifest %s: %w: %s is %q, its location says %q", name, ErrMisplaced, f.field, f.got, f.want)
		}
	}
	prefix := Dir(loc.Namespace, loc.Policy, loc.UUID) + "/"
	for i, f := range m.Files {
		if rest, ok := strings.CutPrefix(f.Name, prefix); !ok || !IsImageFile(rest) {
			return fmt.Errorf("manifest %s: %w: files[%d].name %q is not an image file under %s", name, ErrMisplaced, i, f.Name, prefix)
		}
	}
	return nil
}
