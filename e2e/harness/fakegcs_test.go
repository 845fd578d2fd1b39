package harness

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestFakeGCS: the server answers the JSON API and serves downloads at its own address
// (the public host the Go storage client uses with STORAGE_EMULATOR_HOST), and Stop
// takes it down.
func TestFakeGCS(t *testing.T) {
	LeakCheck(t)
	f := StartFakeGCS(t)
	if !strings.HasPrefix(f.Env(), "STORAGE_EMULATOR_HOST=127.0.0.1:") {
		t.Errorf("Env() = %q", f.Env())
	}
	f.CreateBucket(t, "snaps")
	resp, err := http.Post(f.URL+"/upload/storage/v1/b/snaps/o?uploadType=media&name=ns/p/obj", "application/octet-stream", strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upload: %s", resp.Status)
	}
	if got := f.Objects(t, "snaps"); len(got) != 1 || got[0] != "ns/p/obj" {
		t.Errorf("objects = %v, want [ns/p/obj]", got)
	}
	resp, err = http.Get(f.URL + "/snaps/ns/p/obj")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "payload" {
		t.Errorf("download: %s %q", resp.Status, b)
	}
	f.Stop(t)
	if resp, err := http.Get(f.URL + "/storage/v1/b"); err == nil {
		resp.Body.Close()
		t.Errorf("server still answers after Stop")
	}
}
