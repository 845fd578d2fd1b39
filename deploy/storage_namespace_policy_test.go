package deploy

import (
	"os"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	"sigs.k8s.io/yaml"
)

// TestStorageNamespacePolicy (issue 27 item 9): the shipped admission policy decodes
// strictly as a ValidatingAdmissionPolicy and its binding, takes every
// PodSnapshotStorageConfig as its parameter, checks creates and updates of
// PodSnapshotPolicies of every served version against spec.allowedNamespaces, denies,
// and is part of the kustomization. (What it refuses on a real API server: e2e's
// hardenStorageNamespaces.)
func TestStorageNamespacePolicy(t *testing.T) {
	data, err := os.ReadFile("kubernetes/storage-namespace-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(data), "\n---\n")
	if len(docs) != 2 {
		t.Fatalf("%d documents, want the policy and its binding", len(docs))
	}
	var p admissionv1.ValidatingAdmissionPolicy
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &p); err != nil {
		t.Fatal(err)
	}
	var b admissionv1.ValidatingAdmissionPolicyBinding
	if err := yaml.UnmarshalStrict([]byte(docs[1]), &b); err != nil {
		t.Fatal(err)
	}
	if p.Kind != "ValidatingAdmissionPolicy" || b.Kind != "ValidatingAdmissionPolicyBinding" || b.Spec.PolicyName != p.Name {
		t.Errorf("kinds %q, %q; binding names policy %q, want %q", p.Kind, b.Kind, b.Spec.PolicyName, p.Name)
	}
	if pk := p.Spec.ParamKind; pk == nil || pk.APIVersion != "podsnapshot.gke.io/v1" || pk.Kind != "PodSnapshotStorageConfig" {
		t.Errorf("paramKind = %+v", pk)
	}
	if fp := p.Spec.FailurePolicy; fp == nil || *fp != admissionv1.Fail {
		t.Errorf("failurePolicy = %v, want Fail", fp)
	}
	rules := p.Spec.MatchConstraints.ResourceRules
	if len(rules) != 1 || strings.Join(rules[0].APIGroups, ",") != "podsnapshot.gke.io" || strings.Join(rules[0].APIVersions, ",") != "*" ||
		strings.Join(rules[0].Resources, ",") != "podsnapshotpolicies" || len(rules[0].Operations) != 2 ||
		rules[0].Operations[0] != admissionv1.Create || rules[0].Operations[1] != admissionv1.Update {
		t.Errorf("resourceRules = %+v", rules)
	}
	if len(p.Spec.Validations) != 1 || !strings.Contains(p.Spec.Validations[0].Expression, "params.spec.allowedNamespaces") ||
		!strings.Contains(p.Spec.Validations[0].MessageExpression, "spec.allowedNamespaces") {
		t.Errorf("validations = %+v", p.Spec.Validations)
	}
	ref := b.Spec.ParamRef
	if ref == nil || ref.Selector == nil || len(ref.Selector.MatchLabels)+len(ref.Selector.MatchExpressions) != 0 || ref.Name != "" ||
		ref.ParameterNotFoundAction == nil || *ref.ParameterNotFoundAction != admissionv1.AllowAction {
		t.Errorf("paramRef = %+v, want every storage config (selector {}) and Allow without one", ref)
	}
	if len(b.Spec.ValidationActions) != 1 || b.Spec.ValidationActions[0] != admissionv1.Deny {
		t.Errorf("validationActions = %v, want [Deny]", b.Spec.ValidationActions)
	}
	k, err := os.ReadFile("kubernetes/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(k), "\n- storage-namespace-policy.yaml\n") {
		t.Error("kustomization.yaml does not list storage-namespace-policy.yaml")
	}
}
