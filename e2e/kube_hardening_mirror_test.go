package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/policy"
	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/agent"
)

// hardenMirror (issue 27 item 1) checks on an installed one-node cluster that one
// tenant's policies cannot turn snapshots off for the others:
//  1. the CRD refuses a selector beyond its bounds, naming the field: 33 matchLabels,
//     a 64-character value, a 318-character matchLabels key (the CEL rule);
//  2. the agent writes the storage configs into agent.StorageConfigFile and each
//     namespace's policies into its own agent.NamespaceFile, never the old kubernetes.yaml;
//  3. a namespace whose policies are too large for one policy file (16 policies at the
//     CRD's bounds, about 90 KB each) gets a Warning PolicyNotMirrored Event naming its
//     file and the limit, while another namespace's new policy still reaches the node,
//     and the node's loader reads the directory without a file-size error;
//  4. a namespace whose policies are gone loses its file.
//
// It uses its own namespaces and storage config and deletes them (about 15-30 s, most
// of it namespace deletion).
func (k *kubeEnv) hardenMirror() {
	t := k.t
	t.Helper()
	const nsA, nsB, nsC, store = "harden-mirror-a", "harden-mirror-b", "harden-mirror-c", "harden-mirror-store"
	for _, ns := range []string{nsA, nsB, nsC} {
		k.kubectl("create", "namespace", ns)
	}
	defer func() {
		k.kube.Kubectl("delete", "namespace", nsA, nsB, nsC, "--ignore-not-found", "--timeout=90s")
		k.kube.Kubectl("delete", "podsnapshotstorageconfig", store, "--ignore-not-found")
	}()
	k.apply(fmt.Sprintf(`apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotStorageConfig
metadata: {name: %s}
spec: {snapshotStorageConfig: {local: {path: /var/lib/podsnapshot/%s}}}
`, store, store))
	policyYAML := func(ns, name string, sel *metav1.LabelSelector) string {
		p := v1.PodSnapshotPolicy{TypeMeta: metav1.TypeMeta{APIVersion: v1.SchemeGroupVersion.String(), Kind: v1.KindPolicy},
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: v1.PodSnapshotPolicySpec{Selector: sel, StorageConfigName: store,
				TriggerConfig: v1.TriggerConfig{Type: v1.TriggerManual}}}
		b, err := yaml.Marshal(&p)
		must(t, err)
		return string(b)
	}
	labels := func(n int) *metav1.LabelSelector {
		s := &metav1.LabelSelector{MatchLabels: map[string]string{}}
		for i := range n {
			s.MatchLabels[fmt.Sprintf("l%d", i)] = "x"
		}
		return s
	}

	// 1. Beyond the bounds: refused by the API server, naming the field.
	for _, c := range []struct {
		sel  *metav1.LabelSelector
		want string
	}{
		{labels(v1.MaxSelectorLabels + 1), "spec.selector.matchLabels: Too many"},
		{&metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "In", Values: []string{strings.Repeat("v", 64)}}}},
			"spec.selector.matchExpressions[0].values[0]: Too long"},
		{&metav1.LabelSelector{MatchLabels: map[string]string{strings.Repeat("k", 318): "x"}}, "matchLabels keys are label keys: at most 317 characters"},
	} {
		out, err := k.kube.KubectlInput(policyYAML(nsA, "too-big", c.sel), "create", "-f", "-")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("a policy beyond the CRD's bounds: err=%v out=%q; want a refusal saying %q", err, out, c.want)
		}
	}

	// 2. One file per namespace, one for the storage configs.
	k.apply(policyYAML(nsA, "a1", labels(1)) + "---\n" + policyYAML(nsB, "b1", labels(1)))
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(k.policyDir, name))
		return string(b)
	}
	harness.Eventually(t, 15*time.Second, "each namespace's policy in its own file", func() bool {
		return strings.Contains(read(agent.NamespaceFile(nsA)), "name: a1") && strings.Contains(read(agent.NamespaceFile(nsB)), "name: b1") &&
			!strings.Contains(read(agent.NamespaceFile(nsA)), "name: b1") && strings.Contains(read(agent.StorageConfigFile), "name: "+store)
	})
	if _, err := os.Stat(filepath.Join(k.policyDir, "kubernetes.yaml")); !os.IsNotExist(err) {
		t.Errorf("the single mirror file of earlier versions is there: %v", err)
	}

	// 3. Namespace C's policies at the CRD's bounds, together over a policy file's limit.
	big := func() *metav1.LabelSelector {
		key := func(j int) string { return fmt.Sprintf("%s.example/k%03d", strings.Repeat("p", 200), j) }
		val := func(j int) string { return fmt.Sprintf("%03d%s", j, strings.Repeat("v", v1.MaxLabelValueLength-3)) }
		s := &metav1.LabelSelector{MatchLabels: map[string]string{}}
		for j := range v1.MaxSelectorLabels {
			s.MatchLabels[key(j)] = val(j)
		}
		for j := range v1.MaxSelectorExpressions {
			e := metav1.LabelSelectorRequirement{Key: key(j), Operator: "In"}
			for v := range v1.MaxSelectorValues {
				e.Values = append(e.Values, val(v))
			}
			s.MatchExpressions = append(s.MatchExpressions, e)
		}
		return s
	}
	var docs []string
	for i := range 16 {
		docs = append(docs, policyYAML(nsC, fmt.Sprintf("c%02d", i), big()))
	}
	if out, err := k.kube.KubectlInput(strings.Join(docs, "---\n"), "create", "-f", "-"); err != nil {
		t.Fatalf("16 policies at the CRD's bounds refused: %v %s", err, out)
	}
	k.apply(policyYAML(nsA, "a2", labels(2)))
	events := func() string {
		return k.jsonpath("events", "-n", nsC, "--field-selector", "reason="+agent.ReasonPolicyNotMirrored,
			"-o", `jsonpath={range .items[*]}{.type} {.involvedObject.kind} {.message}{"\n"}{end}`)
	}
	harness.Eventually(t, 20*time.Second, "a PolicyNotMirrored event in "+nsC+" and "+nsA+"'s new policy on the node", func() bool {
		return strings.Contains(read(agent.NamespaceFile(nsA)), "name: a2") && strings.Contains(events(), "over the 1048576-byte limit")
	})
	ev := events()
	if !strings.Contains(ev, "Warning PodSnapshotPolicy ") || !strings.Contains(ev, agent.NamespaceFile(nsC)) {
		t.Errorf("PolicyNotMirrored events in %s:\n%s\nwant Warning on a PodSnapshotPolicy naming %s", nsC, ev, agent.NamespaceFile(nsC))
	}
	set := policy.Load(k.policyDir)
	for _, err := range set.Errors {
		if strings.Contains(err.Error(), "byte limit of a policy file") {
			t.Errorf("the node's loader skips a file: %v", err)
		}
	}
	found := map[string]bool{}
	for _, e := range set.Policies {
		found[e.ID()] = true
	}
	if !found[nsA+"/a1"] || !found[nsA+"/a2"] || !found[nsB+"/b1"] {
		t.Errorf("the node's loader lacks other namespaces' policies: %v", found)
	}
	t.Logf("%s: %s", nsC, strings.TrimSpace(ev))

	// 4. B's policy deleted: B's file goes.
	k.kubectl("delete", "podsnapshotpolicy", "-n", nsB, "b1")
	harness.Eventually(t, 15*time.Second, nsB+"'s file removed", func() bool {
		_, err := os.Stat(filepath.Join(k.policyDir, agent.NamespaceFile(nsB)))
		return os.IsNotExist(err)
	})
}
