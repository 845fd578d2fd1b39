package agent

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
)

// TestPodTokens: a pod a podKSA policy selects gets its service account's token in a 0600
// file named by its UID, and the token is in no log line; a pod of a node-credentials
// policy, or of no policy, gets none; the token goes when the pod is deleted.
func TestPodTokens(t *testing.T) {
	ksa := &v1.PodSnapshotStorageConfig{ObjectMeta: metav1.ObjectMeta{Name: "per-pod"},
		Spec: v1.PodSnapshotStorageConfigSpec{SnapshotStorageConfig: v1.SnapshotStorageConfig{
			GCS: &v1.GCSStorage{Bucket: "b1", TokenSource: v1.TokenSourcePodKSA}}}}
	nodeCreds := &v1.PodSnapshotStorageConfig{ObjectMeta: metav1.ObjectMeta{Name: "node"},
		Spec: v1.PodSnapshotStorageConfigSpec{SnapshotStorageConfig: v1.SnapshotStorageConfig{GCS: &v1.GCSStorage{Bucket: "b1"}}}}
	policyOf := func(name, config, app string) *v1.PodSnapshotPolicy {
		return &v1.PodSnapshotPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec: v1.PodSnapshotPolicySpec{StorageConfigName: config,
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}}}
	}
	withKSA, plain, other := pod("with-ksa", "11111111-1111-1111-1111-111111111111"), pod("plain", "22222222-2222-2222-2222-222222222222"), pod("other", "33333333-3333-3333-3333-333333333333")
	withKSA.Labels["app"], plain.Labels["app"], other.Labels["app"] = "ksa", "node", "none"
	withKSA.Spec.ServiceAccountName = "tenant"
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "tenant"}}
	c := newFake(ksa, nodeCreds, policyOf("p1", "per-pod", "ksa"), policyOf("p2", "node", "node"), withKSA, plain, other, sa)
	var logs bytes.Buffer
	log := logrus.New()
	log.SetOutput(&logs)
	dir := filepath.Join(t.TempDir(), "tokens")
	tok := &podTokens{c: c, node: node, dir: dir, audience: "https://iam.example/provider", lifetime: time.Hour, log: log, now: time.Now,
		refreshAt: map[types.UID]time.Time{}}
	ctx := context.Background()
	for _, p := range []*corev1.Pod{withKSA, plain, other} {
		res, err := tok.Reconcile(ctx, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(p)})
		if err != nil {
			t.Fatalf("reconcile %s: %v", p.Name, err)
		}
		if p == withKSA && res.RequeueAfter <= 0 {
			t.Fatalf("no refresh planned for %s", p.Name)
		}
	}
	path := filepath.Join(dir, string(withKSA.UID))
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "fake-token" {
		t.Fatalf("token file: %q, %v", b, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v, want 0600", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("token directory mode %v, want 0700", fi.Mode().Perm())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("token files %v, want only the podKSA pod's", entries)
	}
	if !strings.Contains(logs.String(), "tenant") || strings.Contains(logs.String(), "fake-token") {
		t.Fatalf("the log must name the service account and never hold the token:\n%s", logs.String())
	}

	if err := c.Delete(ctx, withKSA); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Reconcile(ctx, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(withKSA)}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the deleted pod's token is still there: %v", err)
	}
}

// Issue 27 item 9: a podKSA storage config whose spec.allowedNamespaces leaves out the
// pod's namespace serves no policy there (the node's loader refuses it), so the pod gets
// no token.
func TestNoTokenForDisallowedNamespace(t *testing.T) {
	ksa := &v1.PodSnapshotStorageConfig{ObjectMeta: metav1.ObjectMeta{Name: "per-pod"},
		Spec: v1.PodSnapshotStorageConfigSpec{AllowedNamespaces: []string{"team-a"}, SnapshotStorageConfig: v1.SnapshotStorageConfig{
			GCS: &v1.GCSStorage{Bucket: "b1", TokenSource: v1.TokenSourcePodKSA}}}}
	pol := &v1.PodSnapshotPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "p"},
		Spec: v1.PodSnapshotPolicySpec{StorageConfigName: "per-pod", Selector: &metav1.LabelSelector{}}}
	p := pod("with-ksa", "11111111-1111-1111-1111-111111111111")
	tok := &podTokens{c: newFake(ksa, pol, p), node: node, log: logrus.New(), now: time.Now}
	need, err := tok.needsToken(context.Background(), p)
	if err != nil || need {
		t.Fatalf("needsToken = %v, %v; want false: team-a's config does not serve namespace default", need, err)
	}
}
