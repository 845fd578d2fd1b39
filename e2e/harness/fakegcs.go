package harness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
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

	cmd  *exec.Cmd
	done chan struct{}
}

// Env returns STORAGE_EMULATOR_HOST=Host, for ContainerdOptions.Env (the shim inherits
// containerd's environment) or a command's environment. Nothing global is set.
func (f *FakeGCS) Env() string { return "STORAGE_EMULATOR_HOST=" + f.Host }

// StartFakeGCS starts fake-gcs-server (from $FAKE_GCS_SERVER or DepsBin) on 127.0.0.1 at a
// free port, over plain HTTP, and waits until it answers. It is stopped and reaped at
// cleanup; its log is shown if the test failed.
func StartFakeGCS(t testing.TB) *FakeGCS {
	t.Helper()
	bin := Binary(t, "fake-gcs-server", "FAKE_GCS_SERVER")
	dir := t.TempDir()
	addLeakMarker(t, dir)
	var lastErr error
	// The free port is found by binding and releasing it, so another process can take it
	// before the server binds; try a few ports.
	for attempt := 0; attempt < 3; attempt++ {
		f, err := startFakeGCS(bin, dir)
		if err == nil {
			t.Cleanup(func() {
				f.Stop(t)
				if t.Failed() {
					b, _ := os.ReadFile(f.LogPath)
					t.Logf("harness: fake-gcs-server log (%s):\n%s", f.LogPath, b)
				}
			})
			return f
		}
		lastErr = err
	}
	t.Fatalf("harness: start fake-gcs-server: %v", lastErr)
	return nil
}

func startFakeGCS(bin, dir string) (*FakeGCS, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	host := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	f := &FakeGCS{
		Host:    host,
		URL:     "http://" + host,
		Dir:     dir,
		LogPath: filepath.Join(dir, "fake-gcs-server.log"),
		done:    make(chan struct{}),
	}
	logFile, err := os.OpenFile(f.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("fake-gcs-server log: %w", err)
	}
	defer logFile.Close() // the child has its own copy
	f.cmd = exec.Command(bin,
		"-scheme", "http",
		"-host", "127.0.0.1",
		"-port", strconv.Itoa(port),
		// Downloads and resumable uploads use URLs built from these; they must point back
		// at this server, not at storage.googleapis.com.
		"-public-host", host,
		"-external-url", f.URL,
		"-backend", "filesystem",
		"-filesystem-root", filepath.Join(dir, "data"),
		"-log-level", "warn",
	)
	f.cmd.Stdout, f.cmd.Stderr = logFile, logFile
	if err := startOwned(f.cmd, f.done); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-f.done:
			b, _ := os.ReadFile(f.LogPath)
			return nil, fmt.Errorf("fake-gcs-server exited: %v\n%s", f.cmd.ProcessState, b)
		default:
		}
		resp, err := client.Get(f.URL + "/storage/v1/b")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return f, nil
			}
		}
		if time.Now().After(deadline) {
			f.kill()
			return nil, fmt.Errorf("fake-gcs-server on %s not ready after 20s (last: %v)", host, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (f *FakeGCS) kill() {
	f.cmd.Process.Kill()
	<-f.done
}

// Stop stops the server (SIGTERM, then SIGKILL after 5s) and reaps it, e.g. to simulate
// storage being down. Cleanup calls it too; a second call is a no-op.
func (f *FakeGCS) Stop(t testing.TB) {
	t.Helper()
	select {
	case <-f.done:
		return
	default:
	}
	f.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.done:
	case <-time.After(5 * time.Second):
		f.kill()
	}
}

// CreateBucket creates a bucket through the JSON API.
func (f *FakeGCS) CreateBucket(t testing.TB, name string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"name": name})
	resp, err := http.Post(f.URL+"/storage/v1/b?project=test", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("harness: create bucket %s: %v", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("harness: create bucket %s: %s", name, resp.Status)
	}
}

// Objects lists the names of the objects in bucket (all pages).
func (f *FakeGCS) Objects(t testing.TB, bucket string) []string {
	t.Helper()
	var names []string
	token := ""
	for {
		u := f.URL + "/storage/v1/b/" + url.PathEscape(bucket) + "/o?maxResults=1000"
		if token != "" {
			u += "&pageToken=" + url.QueryEscape(token)
		}
		resp, err := http.Get(u)
		if err != nil {
			t.Fatalf("harness: list bucket %s: %v", bucket, err)
		}
		var page struct {
			Items []struct {
				Name string `json:"name"`
			} `json:"items"`
			NextPageToken string `json:"nextPageToken"`
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("harness: list bucket %s: %s (%v)", bucket, resp.Status, err)
		}
		for _, it := range page.Items {
			names = append(names, it.Name)
		}
		if page.NextPageToken == "" {
			return names
		}
		token = page.NextPageToken
	}
}
