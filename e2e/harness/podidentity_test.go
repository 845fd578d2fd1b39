package harness

import (
	"context"
	"io"
	"os"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"github.com/podsnapshot/podsnapshot/storage"
	_ "github.com/podsnapshot/podsnapshot/storage/gcs"
)

// TestPodIdentityGCS: through the front, a store whose requests carry the token the STS
// issued for a principal writes, lists and reads below its granted prefix, and is refused
// (403) elsewhere; a request without a token is refused (401); the log names each
// request's principal.
func TestPodIdentityGCS(t *testing.T) {
	f := StartFakeGCS(t)
	f.CreateBucket(t, "snapshots")
	const provider = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k"
	p, err := StartPodIdentityGCS(t, "127.0.0.1", f.URL, provider)
	if err != nil {
		t.Fatal(err)
	}
	p.SetReview(func(tok string) (string, error) { return "system:serviceaccount:" + tok, nil })
	p.Grant("system:serviceaccount:a:runner", "snapshots", "tenant-a/")
	p.mu.Lock()
	p.tokens["tok-a"] = "system:serviceaccount:a:runner"
	p.mu.Unlock()
	os.Unsetenv("STORAGE_EMULATOR_HOST")
	ctx := context.Background()
	open := func(u string) storage.Store {
		st, err := storage.Open(ctx, u, storage.WithEndpoint(p.Endpoint),
			storage.WithTokenSource(oauth2.StaticTokenSource(&oauth2.Token{AccessToken: "tok-a"})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	a := open("gs://snapshots/tenant-a")
	for _, name := range []string{"ns/p/keys/k1/0001-x", "ns/p/u/manifest.json"} {
		if _, err := a.Put(ctx, name, strings.NewReader("payload of "+name)); err != nil {
			t.Fatalf("put %s: %v", name, err)
		}
	}
	list, err := a.List(ctx, "ns/p/keys/k1/")
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}
	r, err := a.Get(ctx, "ns/p/u/manifest.json")
	if err != nil {
		for _, r := range p.Requests() {
			t.Logf("%+v", r)
		}
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r)
	r.Close()
	if string(b) != "payload of ns/p/u/manifest.json" {
		t.Fatalf("get: %q", b)
	}
	other := open("gs://snapshots/tenant-b")
	if _, err := other.List(ctx, "ns/"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("a list outside the grant: %v", err)
	}
	for _, r := range p.Requests() {
		if r.Principal != "system:serviceaccount:a:runner" || r.Allowed != strings.HasPrefix(r.Object, "tenant-a/") {
			t.Errorf("front log: %+v", r)
		}
	}
}
