package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
)

func shipped(t *testing.T, name string) *apiextv1.CustomResourceDefinition {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "kubernetes", "crds", name))
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(data, &crd); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &crd
}

// at returns the schema at a dot-separated path of properties, "[]" for an array's items.
func at(t *testing.T, s apiextv1.JSONSchemaProps, path string) apiextv1.JSONSchemaProps {
	t.Helper()
	for _, name := range strings.Split(path, ".") {
		if name == "[]" {
			if s.Items == nil || s.Items.Schema == nil {
				t.Fatalf("%s: no item schema", path)
			}
			s = *s.Items.Schema
			continue
		}
		p, ok := s.Properties[name]
		if !ok {
			t.Fatalf("%s: no property %q", path, name)
		}
		s = p
	}
	return s
}

func is(t *testing.T, what string, got *int64, want int) {
	t.Helper()
	if got == nil || *got != int64(want) {
		t.Errorf("%s = %v, want %d", what, got, want)
	}
}

// Issue 27 item 1: the shipped CRDs bound the policy's selector and lists with the
// constants of checkpoint/api/v1's limits.go (which Validate applies on the nodes), in
// both served versions.
func TestShippedBounds(t *testing.T) {
	pol := shipped(t, "podsnapshotpolicies.yaml")
	if len(pol.Spec.Versions) != 2 {
		t.Fatalf("%d versions", len(pol.Spec.Versions))
	}
	for _, ver := range pol.Spec.Versions {
		root := *ver.Schema.OpenAPIV3Schema
		sel := "spec.selector."
		labels := at(t, root, sel+"matchLabels")
		is(t, ver.Name+" matchLabels maxProperties", labels.MaxProperties, v1.MaxSelectorLabels)
		is(t, ver.Name+" matchLabels value maxLength", labels.AdditionalProperties.Schema.MaxLength, v1.MaxLabelValueLength)
		is(t, ver.Name+" matchExpressions maxItems", at(t, root, sel+"matchExpressions").MaxItems, v1.MaxSelectorExpressions)
		is(t, ver.Name+" key maxLength", at(t, root, sel+"matchExpressions.[].key").MaxLength, v1.MaxLabelKeyLength)
		is(t, ver.Name+" operator maxLength", at(t, root, sel+"matchExpressions.[].operator").MaxLength, v1.MaxSelectorOperatorLength)
		is(t, ver.Name+" values maxItems", at(t, root, sel+"matchExpressions.[].values").MaxItems, v1.MaxSelectorValues)
		is(t, ver.Name+" value maxLength", at(t, root, sel+"matchExpressions.[].values.[]").MaxLength, v1.MaxLabelValueLength)
		is(t, ver.Name+" groupByLabelValue.labels maxItems",
			at(t, root, "spec.snapshotGroupingRules.groupByLabelValue.labels").MaxItems, v1.MaxGroupLabels)
	}
	sc := shipped(t, "podsnapshotstorageconfigs.yaml")
	for _, ver := range sc.Spec.Versions {
		an := at(t, *ver.Schema.OpenAPIV3Schema, "spec.allowedNamespaces")
		is(t, ver.Name+" allowedNamespaces maxItems", an.MaxItems, v1.MaxAllowedNamespaces)
		is(t, ver.Name+" allowedNamespaces item maxLength", an.Items.Schema.MaxLength, 63)
	}
}

// boundSelector refuses a schema without the selector's properties, so that a changed
// type does not ship unbounded.
func TestBoundSelectorMissing(t *testing.T) {
	root := &apiextv1.JSONSchemaProps{Properties: map[string]apiextv1.JSONSchemaProps{
		"spec": {Properties: map[string]apiextv1.JSONSchemaProps{"selector": {}}}}}
	if err := boundSelector(root); err == nil || err.Error() != `spec: selector: schema has no property "matchLabels"` {
		t.Fatalf("err = %v", err)
	}
}
