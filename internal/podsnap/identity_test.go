package podsnap

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/policy"
	"github.com/podsnapshot/podsnapshot/internal/config"
	"github.com/podsnapshot/podsnapshot/runtime/oci"
	_ "github.com/podsnapshot/podsnapshot/storage/gcs"
)

// TestStoreOfPodIdentity: a podKSA store needs the node's provider, the pod's UID and the
// agent's token file (waited for, then a clear error); the token is exchanged at the STS
// with the provider as audience, and a refused exchange is an error that names the token's
// file, never the token.
func TestStoreOfPodIdentity(t *testing.T) {
	const uid = "0b3f5c1e-8d2a-4f6b-9c7d-112233445566"
	const secret = "eyJhbGciOiJSUzI1NiJ9.the-pod-token.signature"
	var got struct{ audience, token string }
	refuse := true
	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		got.audience, got.token = r.PostForm.Get("audience"), r.PostForm.Get("subject_token")
		w.Header().Set("Content-Type", "application/json")
		if refuse {
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":"invalid_grant","error_description":"token rejected"}`))
			return
		}
		w.Write([]byte(`{"access_token":"at","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3600}`))
	}))
	defer sts.Close()
	t.Setenv("STORAGE_EMULATOR_HOST", "")
	os.Unsetenv("STORAGE_EMULATOR_HOST")
	cfg := config.Default()
	cfg.WorkDir = t.TempDir()
	cfg.GCSEndpoint = "http://127.0.0.1:1/storage/v1/"
	cfg.PodIdentity.STSURL = sts.URL
	entry := &policy.Entry{StoreURL: "gs://b1/tenant", StorageConfig: &v1.PodSnapshotStorageConfig{ObjectMeta: metav1.ObjectMeta{Name: "per-pod"},
		Spec: v1.PodSnapshotStorageConfigSpec{SnapshotStorageConfig: v1.SnapshotStorageConfig{GCS: &v1.GCSStorage{Bucket: "b1", Path: "tenant", TokenSource: v1.TokenSourcePodKSA}}}}}
	spec := &specs.Spec{Annotations: map[string]string{oci.SandboxUIDAnnotation: uid}}
	n := &Node{}
	ctx := context.Background()
	tokenWait = 200 * time.Millisecond
	defer func() { tokenWait = 5 * time.Second }()

	if _, err := n.storeOf(ctx, cfg, entry, spec); err == nil || !strings.Contains(err.Error(), "pod_identity.workload_identity_provider") {
		t.Fatalf("no provider: %v", err)
	}
	cfg.PodIdentity.WorkloadIdentityProvider = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k"
	if _, err := n.storeOf(ctx, cfg, entry, &specs.Spec{}); err == nil || !strings.Contains(err.Error(), oci.SandboxUIDAnnotation) {
		t.Fatalf("no pod UID: %v", err)
	}
	if _, err := n.storeOf(ctx, cfg, entry, spec); err == nil || !strings.Contains(err.Error(), "no token for the pod's service account") {
		t.Fatalf("no token: %v", err)
	}
	if err := os.MkdirAll(cfg.Tokens(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.Tokens(), uid), []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := n.storeOf(ctx, cfg, entry, spec)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(cfg.Tokens(), uid)) || strings.Contains(err.Error(), secret) {
		t.Fatalf("refused exchange: %v; want an error naming the token's file and not holding the token", err)
	}
	if got.token != secret || got.audience != cfg.PodIdentity.WorkloadIdentityProvider {
		t.Fatalf("the STS got token %q audience %q", got.token, got.audience)
	}
	refuse = false
	st, err := n.storeOf(ctx, cfg, entry, spec)
	if err != nil || st == nil {
		t.Fatalf("accepted exchange: %v", err)
	}
}
