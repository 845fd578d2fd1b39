package e2e

import (
	"fmt"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/policy"
	"github.com/podsnapshot/podsnapshot/e2e/harness"
)

// hardenStorageNamespaces (issue 27 item 9) checks on an installed one-node cluster that
// a PodSnapshotStorageConfig's spec.allowedNamespaces keeps other namespaces' policies
// off it:
//  1. the CRD refuses an allowedNamespaces entry that is not a namespace name;
//  2. the admission policy of deploy/kubernetes/storage-namespace-policy.yaml refuses a
//     policy of namespace B naming a config that allows only A, with its message (naming
//     the policy, the config and the field), and accepts the same policy in A (both
//     retried for up to 30 s: an admission policy takes effect some seconds after its
//     install);
//  3. a policy of B created while its config allowed every namespace, and the config
//     restricted to A afterwards (admission checks policies, not configs), is skipped by
//     the node's policy loader with an error naming it, the config and the field.
//
// It uses its own namespaces and storage configs and deletes them (about 10-20 s).
func (k *kubeEnv) hardenStorageNamespaces() {
	t := k.t
	t.Helper()
	const nsA, nsB, store, open = "harden-sns-a", "harden-sns-b", "harden-sns-store", "harden-sns-open"
	for _, ns := range []string{nsA, nsB} {
		k.kubectl("create", "namespace", ns)
	}
	defer func() {
		k.kube.Kubectl("delete", "namespace", nsA, nsB, "--ignore-not-found", "--timeout=90s")
		k.kube.Kubectl("delete", "podsnapshotstorageconfig", store, open, "--ignore-not-found")
	}()
	config := func(name, allowed string) string {
		return fmt.Sprintf(`apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotStorageConfig
metadata: {name: %s}
spec:
  allowedNamespaces: %s
  snapshotStorageConfig: {local: {path: /var/lib/podsnapshot/%s}}
`, name, allowed, name)
	}
	pol := func(ns, name, sc string) string {
		return fmt.Sprintf(`apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotPolicy
metadata: {name: %s, namespace: %s}
spec:
  storageConfigName: %s
  selector: {matchLabels: {app: %s}}
  triggerConfig: {type: manual}
`, name, ns, sc, name)
	}

	// 1. Not a namespace name: refused by the CRD.
	if out, err := k.kube.KubectlInput(config(store, "[Team_A]"), "create", "-f", "-"); err == nil ||
		!strings.Contains(err.Error(), "spec.allowedNamespaces[0]") {
		t.Fatalf("allowedNamespaces [Team_A]: err=%v out=%q; want a refusal naming spec.allowedNamespaces[0]", err, out)
	}

	// 2. The admission policy.
	k.apply(config(store, "["+nsA+"]"))
	want := "PodSnapshotPolicy " + nsB + "/p: spec.storageConfigName: PodSnapshotStorageConfig " + store +
		" does not allow namespace " + nsB + " (its spec.allowedNamespaces: " + nsA + ")"
	var last string
	harness.Eventually(t, 30*time.Second, "the policy of "+nsB+" refused by the admission policy", func() bool {
		out, err := k.kube.KubectlInput(pol(nsB, "p", store), "create", "-f", "-")
		if err == nil { // not yet in effect: try again with a new create
			k.kube.Kubectl("delete", "podsnapshotpolicy", "-n", nsB, "p", "--ignore-not-found")
			last = out
			return false
		}
		last = err.Error()
		return strings.Contains(last, want)
	})
	t.Logf("refused: %s", last)
	harness.Eventually(t, 30*time.Second, "the policy of "+nsA+" accepted", func() bool {
		out, err := k.kube.KubectlInput(pol(nsA, "p", store), "apply", "-f", "-")
		last = fmt.Sprint(out, err)
		return err == nil
	})

	// 3. Restricted after the fact: the node's loader skips it.
	k.apply(config(open, "[]") + "---\n" + pol(nsB, "late", open))
	k.apply(config(open, "["+nsA+"]"))
	wantNode := `PodSnapshotPolicy "` + nsB + `/late": spec.storageConfigName: Forbidden: PodSnapshotStorageConfig "` + open +
		`" does not allow namespace "` + nsB + `" (its spec.allowedNamespaces: ` + nsA + `)`
	harness.Eventually(t, 15*time.Second, "the node's loader refusing "+nsB+"/late", func() bool {
		set := policy.Load(k.policyDir)
		if m := set.Match(nsB, map[string]string{"app": "late"}); m.Found() {
			return false
		}
		for _, err := range set.Errors {
			if strings.Contains(err.Error(), wantNode) {
				last = err.Error()
				return true
			}
		}
		return false
	})
	t.Logf("the node: %s", last)
	if m := policy.Load(k.policyDir).Match(nsA, map[string]string{"app": "p"}); !m.Found() || m.Policy.Name != "p" {
		t.Errorf("the node's loader lacks %s/p: %+v", nsA, m)
	}
}
