package v1

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// DocumentError is one bad document of a YAML stream. Its text reads
//
//	policies.yaml: document 2: PodSnapshotPolicy "ns/name": spec.triggerConfig.type: Unsupported value: "foo": supported values: "workload", "manual"
//
// leaving out the parts that are unknown (no file name, or a document that did not get far
// enough to say its kind and name).
// +kubebuilder:object:generate=false
type DocumentError struct {
	// File is the file name as given to DecodeAll; "" for none.
	File string
	// Index is the 1-based position of the document among the stream's non-empty
	// documents; 0 when the error concerns the whole stream (e.g. a read error).
	Index int
	// Kind, Namespace and Name are what the document declares, when known.
	Kind, Namespace, Name string
	// Err is the cause: a field.ErrorList aggregate for validation, else a decode error.
	Err error
}

// Error is the text shown above. Kind, namespace and name are quoted up to
// MaxQuotedValue bytes each and the cause up to 4 KiB (see Truncate): a document's
// values never make the text long.
func (e *DocumentError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File + ": ")
	}
	if e.Index > 0 {
		fmt.Fprintf(&b, "document %d: ", e.Index)
	}
	if e.Kind != "" {
		b.WriteString(Truncate(e.Kind, MaxQuotedValue) + " ")
		if e.Name != "" {
			id := Truncate(e.Name, MaxQuotedValue)
			if e.Namespace != "" {
				id = Truncate(e.Namespace, MaxQuotedValue) + "/" + id
			}
			fmt.Fprintf(&b, "%q: ", id)
		}
	}
	b.WriteString(Truncate(e.Err.Error(), maxCause))
	return b.String()
}

func (e *DocumentError) Unwrap() error { return e.Err }

// Document is one successfully decoded object and where it came from.
// +kubebuilder:object:generate=false
type Document struct {
	File   string
	Index  int
	Object Object
}

// DecodeFile reads path with DecodeAll, naming errors after path.
func DecodeFile(path string) ([]Document, []error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, []error{&DocumentError{File: path, Err: err}}
	}
	defer f.Close()
	return DecodeAll(path, f)
}

// DecodeAll reads a stream of YAML (or JSON) documents separated by "---" lines and decodes
// each with Decode. Documents holding only whitespace and comments are skipped and not
// counted. Every bad document yields one *DocumentError and the others still decode; a read
// error ends the stream with one more error.
func DecodeAll(file string, r io.Reader) ([]Document, []error) {
	var docs []Document
	var errs []error
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	index := 0
	for {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, errs
		}
		if err != nil {
			return docs, append(errs, &DocumentError{File: file, Index: index + 1, Err: fmt.Errorf("read: %w", err)})
		}
		if isEmptyDocument(raw) {
			continue
		}
		index++
		obj, err := Decode(raw)
		if err != nil {
			var de *DocumentError
			if !errors.As(err, &de) {
				de = &DocumentError{Err: err}
			}
			de.File, de.Index = file, index
			errs = append(errs, de)
			continue
		}
		docs = append(docs, Document{File: file, Index: index, Object: obj})
	}
}

// isEmptyDocument is true for a document of blank and comment lines only.
func isEmptyDocument(doc []byte) bool {
	for _, line := range bytes.Split(doc, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' && !bytes.Equal(line, []byte("---")) {
			return false
		}
	}
	return true
}

// supportedAPIVersions are the apiVersions Decode accepts, v1 first.
var supportedAPIVersions = []string{
	GroupName + "/" + Version,
	GroupName + "/" + VersionAlpha1,
}

var supportedKinds = []string{KindStorageConfig, KindPolicy, KindSnapshot, KindManualTrigger}

// header is what Decode reads before knowing the type.
// +kubebuilder:object:generate=false
type header struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// Decode decodes one YAML or JSON document into its kind's type (*PodSnapshotPolicy, ...),
// strictly: duplicate keys and unknown fields are errors (`strict decoding error: unknown
// field "spec.foo"`). It then applies SetDefaults and Validate. apiVersion must be
// podsnapshot.gke.io/v1 or podsnapshot.gke.io/v1alpha1 (kept as written). Errors are
// *DocumentError carrying the kind and name when known; Err is the validation
// field.ErrorList (values cut by ShortenFieldErrors) as an aggregate, or the decode error.
func Decode(data []byte) (Object, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, &DocumentError{Err: err}
	}
	var h header
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(js, &h); err != nil {
		return nil, &DocumentError{Err: fmt.Errorf("not a Kubernetes object: %w", err)}
	}
	de := &DocumentError{Kind: h.Kind, Namespace: h.Metadata.Namespace, Name: h.Metadata.Name}
	if errs := checkTypeMeta(h.TypeMeta); len(errs) > 0 {
		de.Kind = ""
		de.Err = ShortenFieldErrors(errs).ToAggregate()
		return nil, de
	}
	var obj Object
	switch h.Kind {
	case KindStorageConfig:
		obj = &PodSnapshotStorageConfig{}
	case KindPolicy:
		obj = &PodSnapshotPolicy{}
	case KindSnapshot:
		obj = &PodSnapshot{}
	case KindManualTrigger:
		obj = &PodSnapshotManualTrigger{}
	}
	strict, err := sigsjson.UnmarshalStrict(js, obj)
	if err != nil {
		de.Err = err
		return nil, de
	}
	if len(strict) > 0 {
		msgs := make([]string, len(strict))
		for i, e := range strict {
			msgs[i] = e.Error()
		}
		de.Err = fmt.Errorf("strict decoding error: %s", strings.Join(msgs, ", "))
		return nil, de
	}
	SetDefaults(obj)
	de.Namespace = obj.GetNamespace()
	if errs := Validate(obj); len(errs) > 0 {
		de.Err = ShortenFieldErrors(errs).ToAggregate()
		return nil, de
	}
	return obj, nil
}

func checkTypeMeta(tm metav1.TypeMeta) field.ErrorList {
	var errs field.ErrorList
	switch {
	case tm.APIVersion == "":
		errs = append(errs, field.Required(field.NewPath("apiVersion"), ""))
	case !isSupportedAPIVersion(tm.APIVersion):
		errs = append(errs, field.NotSupported(field.NewPath("apiVersion"), tm.APIVersion, supportedAPIVersions))
	}
	switch {
	case tm.Kind == "":
		errs = append(errs, field.Required(field.NewPath("kind"), ""))
	case !contains(supportedKinds, tm.Kind):
		errs = append(errs, field.NotSupported(field.NewPath("kind"), tm.Kind, supportedKinds))
	}
	return errs
}

func isSupportedAPIVersion(v string) bool {
	gv, err := schema.ParseGroupVersion(v)
	return err == nil && gv.Group == GroupName && (gv.Version == Version || gv.Version == VersionAlpha1)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
