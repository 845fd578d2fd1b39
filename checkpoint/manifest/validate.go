package manifest

import (
	"fmt"
	"strings"

	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/podsnapshot/podsnapshot/storage"
)

var (
	states = []State{StatePending, StateCommitted, StateFailed}
	codecs = []string{"zstd", "none"}
)

// ValidationError is a manifest that breaks the rules; its text is
// `manifest ns/policy/uuid: <field errors>`.
type ValidationError struct {
	// Dir is the snapshot directory as far as known.
	Dir string
	// Errs are the problems, kubectl style (`files[0].xxh64: Invalid value: ...`).
	Errs field.ErrorList
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("manifest %s: %v", e.Dir, e.Errs.ToAggregate())
}

// Validate checks m and returns a *ValidationError listing every problem, or nil:
// apiVersion is APIVersion; uuid is a UUID; namespace a namespace name; policy a DNS
// subdomain; key 64 lowercase hex digits; state Pending, Committed or Failed; reason set
// exactly when Failed; createdAt set; a Committed manifest has files and a tuple with
// runscVersion and arch; each file is a valid object name inside the snapshot's directory
// naming an image file (IsImageFile; not the manifest, no duplicates), with codec zstd or none, a 16-hex xxh64, sizes >= 0,
// and storedSize == rawSize for codec none.
func (m *Manifest) Validate() error {
	var errs field.ErrorList
	if m.APIVersion != APIVersion {
		errs = append(errs, field.NotSupported(field.NewPath("apiVersion"), m.APIVersion, []string{APIVersion}))
		return &ValidationError{Dir: m.Dir(), Errs: errs}
	}
	if !IsUUID(m.UUID) {
		errs = append(errs, field.Invalid(field.NewPath("uuid"), m.UUID, "must be a lowercase UUID"))
	}
	for _, msg := range apivalidation.ValidateNamespaceName(m.Namespace, false) {
		errs = append(errs, field.Invalid(field.NewPath("namespace"), m.Namespace, msg))
	}
	for _, msg := range apivalidation.NameIsDNSSubdomain(m.Policy, false) {
		errs = append(errs, field.Invalid(field.NewPath("policy"), m.Policy, msg))
	}
	if !isLowerHex(64, m.Key) {
		errs = append(errs, field.Invalid(field.NewPath("key"), m.Key, "must be 64 lowercase hex digits"))
	}
	if m.SandboxKey != "" && !isLowerHex(64, m.SandboxKey) {
		errs = append(errs, field.Invalid(field.NewPath("sandboxKey"), m.SandboxKey, "must be 64 lowercase hex digits"))
	}
	names := map[string]bool{}
	for i, c := range m.Containers {
		p := field.NewPath("containers").Index(i)
		if c.Name == "" {
			errs = append(errs, field.Required(p.Child("name"), ""))
		} else if names[c.Name] {
			errs = append(errs, field.Duplicate(p.Child("name"), c.Name))
		}
		names[c.Name] = true
		if !isLowerHex(64, c.Key) {
			errs = append(errs, field.Invalid(p.Child("key"), c.Key, "must be 64 lowercase hex digits"))
		}
	}
	errs = append(errs, m.validateState()...)
	if m.CreatedAt.IsZero() {
		errs = append(errs, field.Required(field.NewPath("createdAt"), ""))
	}
	errs = append(errs, m.validateFiles()...)
	errs = append(errs, m.validateScope()...)
	if len(errs) > 0 {
		return &ValidationError{Dir: m.Dir(), Errs: errs}
	}
	return nil
}

// validateScope checks scope is empty, whole-pod or rootfs-only, and that the files
// are of that scope: root file system layers for rootfs-only, memory image files
// otherwise.
func (m *Manifest) validateScope() field.ErrorList {
	p := field.NewPath("scope")
	switch m.Scope {
	case "", ScopeWholePod, ScopeRootfsOnly:
	default:
		return field.ErrorList{field.NotSupported(p, m.Scope, []string{ScopeWholePod, ScopeRootfsOnly})}
	}
	var errs field.ErrorList
	prefix := m.Dir() + "/"
	for i, f := range m.Files {
		_, layer := RootfsContainer(strings.TrimPrefix(f.Name, prefix))
		if layer != m.RootfsOnly() {
			errs = append(errs, field.Invalid(field.NewPath("files").Index(i).Child("name"), f.Name,
				"not a file of a "+m.ScopeName()+" snapshot"))
		}
	}
	return errs
}

func (m *Manifest) validateState() field.ErrorList {
	var errs field.ErrorList
	p := field.NewPath("state")
	switch m.State {
	case StatePending:
	case StateCommitted:
		if len(m.Files) == 0 {
			errs = append(errs, field.Required(field.NewPath("files"), "a committed snapshot has files"))
		}
		if m.Compat.RunscVersion == "" {
			errs = append(errs, field.Required(field.NewPath("compat", "runscVersion"), ""))
		}
		if m.Compat.Arch == "" {
			errs = append(errs, field.Required(field.NewPath("compat", "arch"), ""))
		}
	case StateFailed:
		if m.Reason == "" {
			errs = append(errs, field.Required(field.NewPath("reason"), "a failed snapshot says why"))
		}
	case "":
		return field.ErrorList{field.Required(p, "")}
	default:
		return field.ErrorList{field.NotSupported(p, string(m.State), states)}
	}
	if m.State != StateFailed && m.Reason != "" {
		errs = append(errs, field.Forbidden(field.NewPath("reason"), "only a Failed snapshot has a reason"))
	}
	return errs
}

func (m *Manifest) validateFiles() field.ErrorList {
	var errs field.ErrorList
	prefix := m.Dir() + "/"
	seen := map[string]bool{}
	for i, f := range m.Files {
		p := field.NewPath("files").Index(i)
		switch err := storage.CheckName(f.Name); {
		case err != nil:
			errs = append(errs, field.Invalid(p.Child("name"), f.Name, err.Error()))
		case !strings.HasPrefix(f.Name, prefix):
			errs = append(errs, field.Invalid(p.Child("name"), f.Name, "must be inside "+prefix))
		case f.Name == m.ObjectName():
			errs = append(errs, field.Invalid(p.Child("name"), f.Name, "the manifest does not list itself"))
		case !IsImageFile(strings.TrimPrefix(f.Name, prefix)):
			errs = append(errs, field.Invalid(p.Child("name"), f.Name, "must be "+prefix+" followed by an image file name ("+
				strings.Join([]string{CheckpointFile, PagesMetaFile, PagesFile, RootfsFile("CONTAINER")}, ", ")+", or one without .zst)"))
		case seen[f.Name]:
			errs = append(errs, field.Duplicate(p.Child("name"), f.Name))
		}
		seen[f.Name] = true
		switch f.Codec {
		case "zstd":
		case "none":
			if f.StoredSize != f.RawSize {
				errs = append(errs, field.Invalid(p.Child("storedSize"), f.StoredSize, "must equal rawSize for codec none"))
			}
		default:
			errs = append(errs, field.NotSupported(p.Child("codec"), f.Codec, codecs))
		}
		if f.Framed() || len(f.Frames) > 0 {
			if _, err := storage.NewFrameIndex(f); err != nil {
				errs = append(errs, field.Invalid(p.Child("frames"), len(f.Frames), err.Error()))
			}
		}
		if !isLowerHex(16, f.XXH64) {
			errs = append(errs, field.Invalid(p.Child("xxh64"), f.XXH64, "must be 16 lowercase hex digits"))
		}
		errs = append(errs, apivalidation.ValidateNonnegativeField(f.RawSize, p.Child("rawSize"))...)
		errs = append(errs, apivalidation.ValidateNonnegativeField(f.StoredSize, p.Child("storedSize"))...)
	}
	return errs
}

// isLowerHex tells whether s is n lowercase hex digits. Not a regexp: `{64}` compiled at
// package init was start-up time of every process linking the package (the shim's).
func isLowerHex(n int, s string) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
