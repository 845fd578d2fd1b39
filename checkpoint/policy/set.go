// Package policy reads the policy directory (default /etc/podsnapshot/) and matches pods to
// PodSnapshotPolicies.
//
// Every *.yaml and *.yml file directly in the directory (not in subdirectories, not hidden
// files) of at most MaxFileSize bytes is read, in name order, as a stream of documents. A bad document is skipped and
// recorded as an error naming file, document, object and field; everything else keeps
// working. A Loader notices changed, added and removed files at lookup time, without a
// restart.
package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation/field"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
)

// DefaultDir is the policy directory when none is configured.
const DefaultDir = "/etc/podsnapshot"

// MaxFileSize is the largest policy file read, in bytes: a ConfigMap's limit. A larger
// file is skipped with an error, without reading it.
const MaxFileSize = 1 << 20

// Entry is one usable policy: valid, with an existing storage config.
type Entry struct {
	// Policy is the decoded, defaulted policy.
	Policy *v1.PodSnapshotPolicy
	// StorageConfig is the PodSnapshotStorageConfig named by spec.storageConfigName.
	StorageConfig *v1.PodSnapshotStorageConfig
	// StoreURL is StorageConfig's store: "gs://bucket/path" or "file:///path".
	StoreURL string
	// Selector is spec.selector as a labels.Selector.
	Selector labels.Selector
	// File and Document locate the policy: path and 1-based document index.
	File     string
	Document int
}

// ID is "namespace/name".
func (e *Entry) ID() string { return e.Policy.Namespace + "/" + e.Policy.Name }

// Set is the content of the policy directory at one moment. It is not modified after Load
// returns and is safe for concurrent reads.
type Set struct {
	// Dir is the directory read.
	Dir string
	// Policies are the usable policies, sorted by namespace, then by precedence: oldest
	// metadata.creationTimestamp first (none counts as oldest), then name.
	Policies []*Entry
	// StorageConfigs are the valid storage configs, by name.
	StorageConfigs map[string]*v1.PodSnapshotStorageConfig
	// Errors are the skipped documents (*v1.DocumentError) and unreadable files or
	// directory, in file and document order.
	Errors []error
}

// located is a decoded object with its origin.
type located struct {
	obj      v1.Object
	file     string
	document int
}

// Load reads every *.yaml and *.yml file of dir into a Set. It never fails as a whole: a
// missing directory is an empty Set without errors (no policies configured); an unreadable
// directory or file, and every bad document, is an entry of Set.Errors. Besides the errors
// of v1.Decode, these documents are skipped with an error: a kind other than
// PodSnapshotPolicy and PodSnapshotStorageConfig, a second object of the same kind and
// name, a policy whose storageConfigName names no valid storage config
// (`spec.storageConfigName: Not found: "x"`) or one whose spec.allowedNamespaces leaves
// out the policy's namespace (`spec.storageConfigName: Forbidden: PodSnapshotStorageConfig
// "x" does not allow namespace "b" (its spec.allowedNamespaces: a)`), and every document of a file larger than
// MaxFileSize (`p.yaml: 419430400 bytes, over the 1048576-byte limit of a policy file`).
func Load(dir string) *Set {
	s := &Set{Dir: dir, StorageConfigs: map[string]*v1.PodSnapshotStorageConfig{}}
	files, fileErrs, err := policyFiles(dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.Errors = append(s.Errors, fmt.Errorf("policy directory %s: %w", dir, err))
		}
		return s
	}
	s.Errors = append(s.Errors, fileErrs...)
	var policies []located
	configOrigin := map[string]located{}
	policyOrigin := map[string]located{}
	for _, f := range files {
		docs, errs := decodeFile(f)
		s.Errors = append(s.Errors, errs...)
		for _, d := range docs {
			l := located{obj: d.Object, file: d.File, document: d.Index}
			switch o := d.Object.(type) {
			case *v1.PodSnapshotStorageConfig:
				if prev, dup := configOrigin[o.Name]; dup {
					s.Errors = append(s.Errors, duplicate(l, prev))
					continue
				}
				configOrigin[o.Name] = l
				s.StorageConfigs[o.Name] = o
			case *v1.PodSnapshotPolicy:
				id := o.Namespace + "/" + o.Name
				if prev, dup := policyOrigin[id]; dup {
					s.Errors = append(s.Errors, duplicate(l, prev))
					continue
				}
				policyOrigin[id] = l
				policies = append(policies, l)
			default:
				s.Errors = append(s.Errors, docError(l, field.NotSupported(field.NewPath("kind"),
					d.Object.GetObjectKind().GroupVersionKind().Kind, []string{v1.KindPolicy, v1.KindStorageConfig})))
			}
		}
	}
	for _, l := range policies {
		if e, err := s.entry(l); err != nil {
			s.Errors = append(s.Errors, err)
		} else {
			s.Policies = append(s.Policies, e)
		}
	}
	sort.SliceStable(s.Policies, func(i, j int) bool { return before(s.Policies[i].Policy, s.Policies[j].Policy) })
	sortErrors(s.Errors)
	return s
}

// entry resolves a policy's storage config and selector.
func (s *Set) entry(l located) (*Entry, error) {
	p := l.obj.(*v1.PodSnapshotPolicy)
	cfg, ok := s.StorageConfigs[p.Spec.StorageConfigName]
	if !ok {
		return nil, docError(l, field.NotFound(field.NewPath("spec", "storageConfigName"), p.Spec.StorageConfigName))
	}
	if !cfg.AllowsNamespace(p.Namespace) {
		return nil, docError(l, field.Forbidden(field.NewPath("spec", "storageConfigName"), fmt.Sprintf(
			"PodSnapshotStorageConfig %q does not allow namespace %q (its spec.allowedNamespaces: %s)",
			cfg.Name, p.Namespace, v1.Truncate(strings.Join(cfg.Spec.AllowedNamespaces, ", "), 256))))
	}
	sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
	if err != nil {
		return nil, docError(l, field.Invalid(field.NewPath("spec", "selector"), p.Spec.Selector, err.Error()))
	}
	return &Entry{Policy: p, StorageConfig: cfg, StoreURL: cfg.StoreURL(), Selector: sel, File: l.file, Document: l.document}, nil
}

// before orders policies by namespace, then precedence: oldest creationTimestamp, then name.
func before(a, b *v1.PodSnapshotPolicy) bool {
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	ta, tb := a.CreationTimestamp.Time, b.CreationTimestamp.Time
	if !ta.Equal(tb) {
		return ta.Before(tb)
	}
	return a.Name < b.Name
}

func docError(l located, fe *field.Error) error {
	return &v1.DocumentError{
		File: l.file, Index: l.document,
		Kind: l.obj.GetObjectKind().GroupVersionKind().Kind, Namespace: l.obj.GetNamespace(), Name: l.obj.GetName(),
		Err: v1.ShortenFieldErrors(field.ErrorList{fe}).ToAggregate(),
	}
}

func duplicate(l, prev located) error {
	fe := field.Duplicate(field.NewPath("metadata", "name"), l.obj.GetName())
	fe.Detail = fmt.Sprintf("already defined in %s document %d", prev.file, prev.document)
	return docError(l, fe)
}

// sortErrors orders document errors by file and index; other errors keep their place first.
func sortErrors(errs []error) {
	key := func(e error) (string, int) {
		var de *v1.DocumentError
		if errors.As(e, &de) {
			return de.File, de.Index
		}
		return "", 0
	}
	sort.SliceStable(errs, func(i, j int) bool {
		fi, di := key(errs[i])
		fj, dj := key(errs[j])
		if fi != fj {
			return fi < fj
		}
		return di < dj
	})
}

// CheckFile returns the errors Load would report for a policy file named path holding
// data, without the ones that depend on other files (a storage config not found or not
// allowing the namespace, a duplicate name): one error naming the size and the limit
// when data is over MaxFileSize, else every document Load would skip (*v1.DocumentError).
// A writer of the policy directory calls it to keep a file Load would not read whole
// from replacing a good one.
func CheckFile(path string, data []byte) []error {
	if len(data) > MaxFileSize {
		return tooLarge(path, int64(len(data)))
	}
	_, errs := v1.DecodeAll(path, bytes.NewReader(data))
	return errs
}

// tooLarge is the error of a file of size bytes, over MaxFileSize.
func tooLarge(path string, size int64) []error {
	return []error{&v1.DocumentError{File: path,
		Err: fmt.Errorf("%d bytes, over the %d-byte limit of a policy file (a ConfigMap's)", size, MaxFileSize)}}
}

// decodeFile decodes f with v1.DecodeAll, unless it holds more than MaxFileSize bytes
// (when listed, or when read: it may have grown since): then it is one error naming it and
// its size, and at most MaxFileSize+1 bytes of it were read.
func decodeFile(f policyFile) ([]v1.Document, []error) {
	if f.info.Size() > MaxFileSize {
		return nil, tooLarge(f.path, f.info.Size())
	}
	file, err := os.Open(f.path)
	if err != nil {
		return nil, []error{&v1.DocumentError{File: f.path, Err: err}}
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, MaxFileSize+1))
	if err != nil {
		return nil, []error{&v1.DocumentError{File: f.path, Err: err}}
	}
	if len(data) > MaxFileSize {
		size := int64(len(data))
		if fi, err := file.Stat(); err == nil {
			size = fi.Size()
		}
		return nil, tooLarge(f.path, size)
	}
	return v1.DecodeAll(f.path, bytes.NewReader(data))
}

type policyFile struct {
	path string
	info os.FileInfo
}

// policyFiles lists dir's *.yaml and *.yml regular files (following symlinks, as in a
// mounted ConfigMap), skipping names starting with "." and non-regular files, in name
// order. A name it cannot stat (a dangling symlink) is one of fileErrs; err is the
// directory's own read error.
func policyFiles(dir string) (files []policyFile, fileErrs []error, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range entries {
		name := e.Name()
		ext := strings.ToLower(filepath.Ext(name))
		if strings.HasPrefix(name, ".") || (ext != ".yaml" && ext != ".yml") {
			continue
		}
		p := filepath.Join(dir, name)
		info, err := os.Stat(p)
		if err != nil {
			fileErrs = append(fileErrs, &v1.DocumentError{File: p, Err: err})
			continue
		}
		if info.Mode().IsRegular() {
			files = append(files, policyFile{path: p, info: info})
		}
	}
	return files, fileErrs, nil
}
