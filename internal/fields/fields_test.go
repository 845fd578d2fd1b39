// Package fields holds one test: every field a user can set in the podsnapshot.gke.io
// objects (policy files and CRDs share the Go types of checkpoint/api/v1) and in the
// shim's TOML config (internal/config) is either read by the code that acts on it, or
// refused with an error that names it. A field added to those types without an entry in
// the tables below fails the test, so nothing new can be accepted and silently ignored.
package fields

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/internal/config"
)

// handling says what happens to a field, or to one value of an enum field (path=value).
type handling struct {
	// readIn: the non-test file (from the repository root) whose code acts on the field:
	// it must mention the Go field (or, for a value, its constant) by name.
	readIn string
	// refused: a document setting the field (to this YAML or TOML value) is refused with an
	// error naming it.
	refused string
	// defaultOnly: the only accepted value is the default, which is what the code does
	// without reading the field (every other value is refused: see its path=value row).
	defaultOnly bool
}

// policyFields covers the specs of the four kinds, by JSON path; enum values as
// path=value.
var policyFields = map[string]handling{
	"PodSnapshotStorageConfig spec.snapshotStorageConfig":                               {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotStorageConfig spec.snapshotStorageConfig.gcs":                           {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotStorageConfig spec.snapshotStorageConfig.gcs.bucket":                    {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotStorageConfig spec.snapshotStorageConfig.gcs.path":                      {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotStorageConfig spec.snapshotStorageConfig.gcs.tokenSource":               {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotStorageConfig spec.snapshotStorageConfig.gcs.tokenSource=podKSA":        {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotStorageConfig spec.snapshotStorageConfig.gcs.tokenSource=federatedP4SA": {refused: "federatedP4SA"},
	"PodSnapshotStorageConfig spec.snapshotStorageConfig.local":                         {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotStorageConfig spec.snapshotStorageConfig.local.path":                    {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotStorageConfig spec.allowedNamespaces":                                   {readIn: "checkpoint/api/v1/helpers.go"},

	"PodSnapshotPolicy spec.selector":                                                            {readIn: "checkpoint/policy/set.go"},
	"PodSnapshotPolicy spec.storageConfigName":                                                   {readIn: "checkpoint/policy/set.go"},
	"PodSnapshotPolicy spec.triggerConfig":                                                       {readIn: "internal/podsnap/pod.go"},
	"PodSnapshotPolicy spec.triggerConfig.type":                                                  {readIn: "internal/podsnap/pod.go"},
	"PodSnapshotPolicy spec.triggerConfig.type=workload":                                         {readIn: "internal/podsnap/pod.go"},
	"PodSnapshotPolicy spec.triggerConfig.type=manual":                                           {readIn: "internal/agent/triggers.go"},
	"PodSnapshotPolicy spec.triggerConfig.postCheckpoint":                                        {readIn: "internal/podsnap/pod.go"},
	"PodSnapshotPolicy spec.triggerConfig.postCheckpoint=stop":                                   {readIn: "internal/podsnap/pod.go"},
	"PodSnapshotPolicy spec.triggerConfig.postCheckpoint=resume":                                 {defaultOnly: true},
	"PodSnapshotPolicy spec.retentionConfig":                                                     {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotPolicy spec.retentionConfig.lastAccessTimeout":                                   {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotPolicy spec.snapshotGroupingRules":                                               {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotPolicy spec.snapshotGroupingRules.groupByLabelValue":                             {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotPolicy spec.snapshotGroupingRules.groupByLabelValue.labels":                      {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotPolicy spec.snapshotGroupingRules.groupRetentionPolicy":                          {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotPolicy spec.snapshotGroupingRules.groupRetentionPolicy.maxSnapshotCountPerGroup": {readIn: "checkpoint/api/v1/helpers.go"},
	"PodSnapshotPolicy spec.snapshotScope":                                                       {readIn: "internal/podsnap/rootfs.go"},
	"PodSnapshotPolicy spec.snapshotScope=whole-pod":                                             {defaultOnly: true},
	"PodSnapshotPolicy spec.snapshotScope=rootfs-only":                                           {readIn: "internal/podsnap/rootfs.go"},

	"PodSnapshot spec.policyName":             {readIn: "internal/controller/sync.go"},
	"PodSnapshotManualTrigger spec.targetPod": {readIn: "internal/agent/triggers.go"},
}

// configFields covers the shim config, by TOML key.
var configFields = map[string]handling{
	"log_level":            {readIn: "shim/service.go"},
	"work_dir":             {readIn: "internal/podsnap/pod.go"},
	"policy_dir":           {readIn: "internal/podsnap/pod.go"},
	"cache_dir":            {readIn: "internal/config/config.go"}, // Config.Cache
	"cache_max_bytes":      {readIn: "internal/podsnap/pod.go"},
	"restore_wait_seconds": {readIn: "internal/config/config.go"}, // Config.RestoreWait
	"kubelet_pods_dir":     {readIn: "shim/container.go"},
	"save_direct":          {readIn: "internal/podsnap/trigger.go"},
	"exclude_zero_pages":   {readIn: "internal/podsnap/trigger.go"},
	"stream_restore":       {readIn: "internal/podsnap/fetch.go"},
	"hot_frames":           {readIn: "internal/podsnap/pod.go"},
	"restore_direct":       {readIn: "internal/podsnap/fetch.go"},
	"report_dir":           {readIn: "internal/config/config.go"}, // Config.Reports
	"report_max_files":     {readIn: "internal/podsnap/report.go"},
	"gcs_endpoint":         {readIn: "internal/podsnap/identity.go"},
	"pod_identity":         {readIn: "internal/podsnap/identity.go"},
	"pod_identity.workload_identity_provider": {readIn: "internal/podsnap/identity.go"},
	"pod_identity.token_audience":             {readIn: "internal/config/config.go"}, // PodIdentity.Audience
	"pod_identity.sts_url":                    {readIn: "internal/podsnap/identity.go"},
	"pod_identity.token_dir":                  {readIn: "internal/config/config.go"}, // Config.Tokens
	"runsc":                                   {readIn: "shim/service.go"},
	"runsc.path":                              {readIn: "shim/service.go"},
	"runsc.root":                              {readIn: "shim/service.go"},
	"runsc.flags":                             {readIn: "shim/service.go"},
}

// A valid document of each kind, into which a refused value is put.
var baseDocs = map[string]string{
	"PodSnapshotStorageConfig": `apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotStorageConfig
metadata: {name: s}
spec:
  snapshotStorageConfig:
    gcs: {bucket: b1}
`,
	"PodSnapshotPolicy": `apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotPolicy
metadata: {name: p, namespace: default}
spec:
  selector: {}
  storageConfigName: s
  triggerConfig: {type: workload}
`,
}

func TestEveryPolicyFieldIsReadOrRefused(t *testing.T) {
	enums := enumValues(t)
	var found []field
	for kind, typ := range map[string]reflect.Type{
		"PodSnapshotStorageConfig": reflect.TypeFor[v1.PodSnapshotStorageConfigSpec](),
		"PodSnapshotPolicy":        reflect.TypeFor[v1.PodSnapshotPolicySpec](),
		"PodSnapshot":              reflect.TypeFor[v1.PodSnapshotSpec](),
		"PodSnapshotManualTrigger": reflect.TypeFor[v1.PodSnapshotManualTriggerSpec](),
	} {
		found = append(found, walk(typ, kind+" spec", "json", enums)...)
	}
	check(t, found, policyFields, func(path, value string) error {
		kind, p, _ := strings.Cut(path, " ")
		base, ok := baseDocs[kind]
		if !ok {
			t.Fatalf("%s: no base document of kind %s to refuse it in", path, kind)
		}
		return decodeWith(base, p, value)
	})
}

func TestEveryConfigKeyIsReadOrRefused(t *testing.T) {
	found := walk(reflect.TypeFor[config.Config](), "", "toml", nil)
	check(t, found, configFields, func(path, value string) error {
		_, err := config.Parse([]byte(path + " = " + value + "\n"))
		return err
	})
}

// field is one settable path: its Go field (or enum constant) name and, for an enum
// value, the value.
type field struct {
	path   string
	goName string
}

// check compares the fields found by reflection with the table and checks each entry.
func check(t *testing.T, found []field, table map[string]handling, refuse func(path, value string) error) {
	t.Helper()
	seen := map[string]bool{}
	for _, f := range found {
		seen[f.path] = true
		h, ok := table[f.path]
		if !ok {
			t.Errorf("%s (Go %s) is accepted but in no table of %s: name the file that acts on it, or refuse it with an error naming it",
				f.path, f.goName, "internal/fields/fields_test.go")
			continue
		}
		switch {
		case h.readIn != "":
			if !mentions(t, h.readIn, f.goName) {
				t.Errorf("%s: %s does not mention %s any more: is the field still read?", f.path, h.readIn, f.goName)
			}
		case h.refused != "":
			named, _, _ := strings.Cut(f.path, "=")
			dotted := named[strings.LastIndex(named, " ")+1:]
			if err := refuse(named, h.refused); err == nil || !strings.Contains(err.Error(), dotted) {
				t.Errorf("%s: a document setting it to %s is not refused naming %s: %v", f.path, h.refused, dotted, err)
			}
		case h.defaultOnly:
		default:
			t.Errorf("%s: its table entry says nothing", f.path)
		}
	}
	for path := range table {
		if !seen[path] {
			t.Errorf("%s is in the table but no longer a field", path)
		}
	}
}

// walk lists the settable paths of t (tag names json or toml), descending into structs,
// pointers to them and slices of them; metav1 types (a label selector) are one field.
// Enum fields (a named string type with constants) add path=value for each constant.
func walk(t reflect.Type, prefix, tag string, enums map[string][][2]string) []field {
	var out []field
	for i := range t.NumField() {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get(tag), ",")
		if name == "-" || name == "" || !sf.IsExported() {
			continue
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		out = append(out, field{path: path, goName: sf.Name})
		ft := sf.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		for _, c := range enums[ft.Name()] {
			out = append(out, field{path: path + "=" + c[1], goName: c[0]})
		}
		if ft.Kind() == reflect.Struct && ft.PkgPath() != reflect.TypeFor[metav1.LabelSelector]().PkgPath() {
			out = append(out, walk(ft, path, tag, enums)...)
		}
	}
	return out
}

// enumValues parses checkpoint/api/v1/types.go: for each string type with constants,
// the constants' names and values.
func enumValues(t *testing.T) map[string][][2]string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(root(t), "checkpoint/api/v1/types.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][][2]string{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			typ, ok := vs.Type.(*ast.Ident)
			if !ok || len(vs.Values) != len(vs.Names) {
				continue
			}
			for i, n := range vs.Names {
				if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					out[typ.Name] = append(out[typ.Name], [2]string{n.Name, strings.Trim(lit.Value, `"`)})
				}
			}
		}
	}
	return out
}

// identsOf caches, by file, the identifiers a file uses (a selector x.name included).
var identsOf = map[string]map[string]bool{}

// mentions reports whether the Go file at rel (from the repository root) uses name as
// an identifier or a selector (x.name).
func mentions(t *testing.T, rel, name string) bool {
	t.Helper()
	if strings.HasSuffix(rel, "_test.go") {
		t.Fatalf("%s: a test file does not count as reading a field", rel)
	}
	idents, ok := identsOf[rel]
	if !ok {
		f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(root(t), rel), nil, 0)
		if err != nil {
			t.Fatalf("%v", err)
		}
		idents = map[string]bool{}
		ast.Inspect(f, func(n ast.Node) bool {
			if id, ok := n.(*ast.Ident); ok {
				idents[id.Name] = true
			}
			return true
		})
		identsOf[rel] = idents
	}
	return idents[name]
}

// decodeWith decodes base with the field at path (dotted, from the document's root) set
// to the YAML value, through the policy decoder (the one policy files and the agent use).
func decodeWith(base, path, value string) error {
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(base), &doc); err != nil {
		return err
	}
	parts := strings.Split(path, ".")
	m := doc
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = value
	data, err := yaml.Marshal(doc)
	if err != nil {
		return err
	}
	_, err = v1.Decode(data)
	return err
}

// root is the repository root (this package is internal/fields).
func root(t *testing.T) string {
	t.Helper()
	r, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return r
}
