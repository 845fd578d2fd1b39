package labhost

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// FakeGCS is a fake-gcs-server started by StartFakeGCS.
type FakeGCS struct {
	*Daemon
	// Host is "127.0.0.1:PORT", the value for STORAGE_EMULATOR_HOST.
	Host string
	// URL is "http://127.0.0.1:PORT".
	URL string
	// Dir holds the objects (in Dir/data: filesystem backend, so they stay out of memory
	// and survive a new server on the same Dir) and the server's log.
	Dir     string
	LogPath string
}

// StartFakeGCS starts fake-gcs-server bin on 127.0.0.1 at a free port, over plain HTTP,
// its objects and log in dir, and waits until it answers. The free port is found by
// binding and releasing it, so another process may take it first: it tries a few.
func StartFakeGCS(ctx context.Context, bin, dir string) (*FakeGCS, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		f, err := startFakeGCS(ctx, bin, dir)
		if err == nil {
			return f, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func startFakeGCS(ctx context.Context, bin, dir string) (*FakeGCS, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("find a free port: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	host := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	f := &FakeGCS{Host: host, URL: "http://" + host, Dir: dir, LogPath: filepath.Join(dir, "fake-gcs-server.log")}
	logFile, err := os.OpenFile(f.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("fake-gcs-server log: %w", err)
	}
	defer logFile.Close() // the child has its own copy
	cmd := exec.Command(bin,
		"-scheme", "http", "-host", "127.0.0.1", "-port", strconv.Itoa(port),
		// Downloads and resumable uploads use URLs built from these; they must point back
		// at this server, not at storage.googleapis.com.
		"-public-host", host, "-external-url", f.URL,
		// On disk rather than in the server's memory: a large snapshot stays out of RAM.
		"-backend", "filesystem", "-filesystem-root", filepath.Join(dir, "data"),
		"-log-level", "warn")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if f.Daemon, err = StartDaemon(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if f.Exited() {
			b, _ := os.ReadFile(f.LogPath)
			return nil, fmt.Errorf("fake-gcs-server on %s exited: %v\n%s", host, cmd.ProcessState, b)
		}
		resp, err := client.Get(f.URL + "/storage/v1/b")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return f, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			f.Kill()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("start fake-gcs-server: %w", context.Cause(ctx))
			}
			return nil, fmt.Errorf("fake-gcs-server on %s not ready after 20s (last: %v)", host, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// CreateBucket creates bucket name in project through the JSON API.
func (f *FakeGCS) CreateBucket(ctx context.Context, project, name string) error {
	body, _ := json.Marshal(map[string]string{"name": name})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.URL+"/storage/v1/b?project="+project, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", name, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", name, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("create bucket %s: %s", name, resp.Status)
	}
	return nil
}
