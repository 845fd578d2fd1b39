package harness

import (
	"context"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/fakegcs"
)

// FakeGCS is a fake-gcs-server started by StartFakeGCS.
type FakeGCS struct {
	// Host is "127.0.0.1:PORT", the value for STORAGE_EMULATOR_HOST.
	Host string
	// URL is "http://127.0.0.1:PORT".
	URL string
	// Dir holds the objects (filesystem backend, so they survive Stop and a new server on
	// the same Dir) and the server's log.
	Dir     string
	LogPath string

	srv *fakegcs.Server
	bin string
}

// Env returns STORAGE_EMULATOR_HOST=Host, for ContainerdOptions.Env (the shim inherits
// containerd's environment) or a command's environment. Nothing global is set.
func (f *FakeGCS) Env() string { return "STORAGE_EMULATOR_HOST=" + f.Host }

// StartFakeGCS starts fake-gcs-server (from $FAKE_GCS_SERVER or DepsBin) on 127.0.0.1 at a
// free port, over plain HTTP, and waits until it answers. It is stopped and reaped at
// cleanup; its log is shown if the test failed.
func StartFakeGCS(t testing.TB) *FakeGCS {
	t.Helper()
	bin := Binary(t, "fake-gcs-server", fakegcs.EnvBinary)
	dir := t.TempDir()
	addLeakMarker(t, dir)
	// The same launcher as the demo's and the storage tests' (internal/testenv/fakegcs);
	// it tries a few free ports, as another process can take one before the server
	// binds it.
	srv, err := fakegcs.Start(context.Background(), fakegcs.Options{Binary: bin, Dir: dir})
	if err != nil {
		t.Fatalf("harness: start fake-gcs-server: %v", err)
	}
	f := &FakeGCS{Host: srv.Host, URL: srv.URL, Dir: srv.Dir, LogPath: srv.LogPath, srv: srv, bin: bin}
	t.Cleanup(func() {
		f.Stop(t)
		if t.Failed() {
			b, _ := os.ReadFile(f.LogPath)
			t.Logf("harness: fake-gcs-server log (%s):\n%s", f.LogPath, b)
		}
	})
	return f
}

// Stop stops the server (SIGTERM, then SIGKILL after 5s) and reaps it, e.g. to simulate
// storage being down. Cleanup calls it too; a second call is a no-op.
func (f *FakeGCS) Stop(t testing.TB) {
	t.Helper()
	f.srv.Stop(5 * time.Second)
}

// Kill kills the server at once (SIGKILL), as a store that dies mid-request.
func (f *FakeGCS) Kill(t testing.TB) {
	t.Helper()
	f.srv.Kill()
	<-f.srv.Done()
}

// Restart brings the store back after Stop or Kill: a new server on the same directory
// (the objects written before are there) at the same address.
func (f *FakeGCS) Restart(t testing.TB) {
	t.Helper()
	_, port, _ := net.SplitHostPort(f.Host)
	p, _ := strconv.Atoi(port)
	srv, err := fakegcs.Start(context.Background(), fakegcs.Options{Binary: f.bin, Dir: f.Dir, Port: p})
	if err != nil {
		t.Fatalf("harness: restart fake-gcs-server: %v", err)
	}
	f.srv, f.Host, f.URL = srv, srv.Host, srv.URL
}

// CreateBucket creates a bucket through the JSON API.
func (f *FakeGCS) CreateBucket(t testing.TB, name string) {
	t.Helper()
	if err := f.srv.CreateBucket(context.Background(), "test", name); err != nil {
		t.Fatalf("harness: %v", err)
	}
}

// Objects lists the names of the objects in bucket (all pages).
func (f *FakeGCS) Objects(t testing.TB, bucket string) []string {
	t.Helper()
	names, err := f.srv.Objects(context.Background(), bucket)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return names
}
