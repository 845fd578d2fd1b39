// Package fakegcs runs fake-gcs-server (github.com/fsouza/fake-gcs-server), the GCS
// emulator, as a real HTTP server on 127.0.0.1: the one launcher of the storage tests and
// benchmarks, the e2e tests, the demo and the benchmarks. It knows nothing of containers.
package fakegcs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv"
	"github.com/podsnapshot/podsnapshot/internal/testenv/hostproc"
)

// EnvBinary names the environment variable that may point at the fake-gcs-server binary.
const EnvBinary = "FAKE_GCS_SERVER"

// Binary finds fake-gcs-server: $FAKE_GCS_SERVER, else fake-gcs-server in the folder
// `make deps` fills (testenv.DepsBin).
func Binary() (string, error) { return testenv.Tool("fake-gcs-server", EnvBinary) }

// Options configure Start.
type Options struct {
	// Binary is the fake-gcs-server to run; default: Binary().
	Binary string
	// Dir, when set, holds the objects (in Dir/data: the filesystem backend, so a large
	// snapshot stays out of the server's memory and the objects survive a new server on
	// the same Dir) and the server's log (Dir/fake-gcs-server.log). Empty: the memory
	// backend, the output going to Log.
	Dir string
	// Log receives the server's output when Dir is empty; nil discards it.
	Log io.Writer
	// Port, when set, is the port to listen on (a store brought back at its address);
	// 0 picks a free one.
	Port int
	// IP is the address to listen on; default 127.0.0.1. The Kubernetes nodes of
	// internal/testenv/kube live in network namespaces of their own and reach the host
	// only at its bridge address (Cluster.BridgeIP).
	IP string
}

// Server is a running fake-gcs-server. Stop (SIGTERM, then SIGKILL) or Kill it; both
// reap it.
type Server struct {
	*hostproc.Daemon
	// Host is "IP:PORT" (IP: Options.IP, default 127.0.0.1), the value for
	// STORAGE_EMULATOR_HOST.
	Host string
	// URL is "http://IP:PORT".
	URL string
	// Dir and LogPath are Options.Dir and the log file in it (empty without a Dir).
	Dir     string
	LogPath string
}

// Start runs fake-gcs-server on a free port of 127.0.0.1, over plain HTTP, and waits
// until it answers. The free port is found by binding and releasing it, so another
// process may take it first: it tries a few. The server runs in its own process group
// and dies with this process (hostproc.StartDaemon).
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Binary == "" {
		bin, err := Binary()
		if err != nil {
			return nil, err
		}
		opts.Binary = bin
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		s, err := start(ctx, opts)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func start(ctx context.Context, opts Options) (*Server, error) {
	ip := opts.IP
	if ip == "" {
		ip = "127.0.0.1"
	}
	port := opts.Port
	if port == 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		port = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
	}
	host := net.JoinHostPort(ip, strconv.Itoa(port))
	s := &Server{Host: host, URL: "http://" + host, Dir: opts.Dir}
	// -public-host must be the address clients use: the Go client reads objects through
	// the XML API (GET /bucket/object), which the emulator only routes for its public
	// host. Downloads and resumable uploads use URLs built from -external-url; both must
	// point back at this server, not at storage.googleapis.com.
	args := []string{"-scheme", "http", "-host", ip, "-port", strconv.Itoa(port),
		"-public-host", host, "-external-url", s.URL, "-log-level", "warn"}
	cmd := exec.Command(opts.Binary)
	if opts.Dir != "" {
		s.LogPath = filepath.Join(opts.Dir, "fake-gcs-server.log")
		logFile, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("fake-gcs-server log: %w", err)
		}
		defer logFile.Close() // the child has its own copy
		cmd.Stdout, cmd.Stderr = logFile, logFile
		args = append(args, "-backend", "filesystem", "-filesystem-root", filepath.Join(opts.Dir, "data"))
	} else {
		cmd.Stdout, cmd.Stderr = opts.Log, opts.Log
		args = append(args, "-backend", "memory")
	}
	cmd.Args = append(cmd.Args, args...)
	var err error
	if s.Daemon, err = hostproc.StartDaemon(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", opts.Binary, err)
	}
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if s.Exited() {
			return nil, fmt.Errorf("fake-gcs-server on %s exited: %v%s", host, cmd.ProcessState, s.logTail())
		}
		resp, err := client.Get(s.URL + "/storage/v1/b")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.Kill()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("start fake-gcs-server: %w", context.Cause(ctx))
			}
			return nil, fmt.Errorf("fake-gcs-server on %s not ready after 20s (last: %v)", host, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logTail is the server's log for an error message, when it has one.
func (s *Server) logTail() string {
	if s.LogPath == "" {
		return ""
	}
	b, _ := os.ReadFile(s.LogPath)
	return "\n" + string(b)
}

// CreateBucket creates bucket name in project through the JSON API.
func (s *Server) CreateBucket(ctx context.Context, project, name string) error {
	body, _ := json.Marshal(map[string]string{"name": name})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/storage/v1/b?project="+url.QueryEscape(project), bytes.NewReader(body))
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

// Objects lists the names of the objects in bucket (all pages) through the JSON API.
func (s *Server) Objects(ctx context.Context, bucket string) ([]string, error) {
	var names []string
	token := ""
	for {
		u := s.URL + "/storage/v1/b/" + url.PathEscape(bucket) + "/o?maxResults=1000"
		if token != "" {
			u += "&pageToken=" + url.QueryEscape(token)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, fmt.Errorf("list bucket %s: %w", bucket, err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, fmt.Errorf("list bucket %s: %w", bucket, err)
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
			return nil, fmt.Errorf("list bucket %s: %s (%v)", bucket, resp.Status, err)
		}
		for _, it := range page.Items {
			names = append(names, it.Name)
		}
		if page.NextPageToken == "" {
			return names, nil
		}
		token = page.NextPageToken
	}
}
