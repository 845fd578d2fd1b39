// Package fakegcs runs fake-gcs-server (github.com/fsouza/fake-gcs-server) as a real HTTP
// server on 127.0.0.1 for tests and benchmarks of storage/gcs.
package fakegcs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// EnvBinary names the environment variable that may point at the fake-gcs-server binary.
const EnvBinary = "FAKE_GCS_SERVER"

// Server is a running fake-gcs-server.
type Server struct {
	// Host is "127.0.0.1:port", the value for STORAGE_EMULATOR_HOST.
	Host string
	cmd  *exec.Cmd
	done chan error
}

// Binary finds fake-gcs-server: $FAKE_GCS_SERVER, else <repo>/_deps/bin/fake-gcs-server
// where <repo> is the nearest directory above the working directory holding go.mod.
func Binary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("fake-gcs-server: $%s: %w (run `make deps`, or point $%s at the binary)", EnvBinary, err, EnvBinary)
		}
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "_deps", "bin", "fake-gcs-server")
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("fake-gcs-server not found at %s (run `make deps`, or set $%s)", p, EnvBinary)
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("fake-gcs-server: no go.mod above the working directory (run `make deps`, or set $%s)", EnvBinary)
		}
		dir = parent
	}
}

// Start runs fake-gcs-server on a free port of 127.0.0.1 with the memory backend, or the
// filesystem backend under fsRoot when fsRoot is not empty, and waits until it answers.
// Its output goes to logFile when not nil.
func Start(ctx context.Context, fsRoot string, logFile *os.File) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	host := fmt.Sprintf("127.0.0.1:%d", port)
	// -public-host must be the address clients use: the Go client reads objects through
	// the XML API (GET /bucket/object), which the emulator only routes for its public
	// host; otherwise it takes the Host header for a bucket name and answers 404.
	args := []string{"-scheme", "http", "-host", "127.0.0.1", "-port", fmt.Sprint(port),
		"-public-host", host, "-log-level", "warn"}
	if fsRoot != "" {
		args = append(args, "-backend", "filesystem", "-filesystem-root", fsRoot)
	} else {
		args = append(args, "-backend", "memory")
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive us
	if logFile != nil {
		cmd.Stdout, cmd.Stderr = logFile, logFile
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s := &Server{Host: host, cmd: cmd, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait() }()
	if err := s.wait(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// wait polls the bucket list until the server answers.
func (s *Server) wait(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	url := "http://" + s.Host + "/storage/v1/b"
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-s.done:
			s.done <- err
			return fmt.Errorf("fake-gcs-server exited at start: %v", err)
		case <-ctx.Done():
			return errors.New("fake-gcs-server did not answer within 30s")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop kills the server and reaps it.
func (s *Server) Stop() {
	s.cmd.Process.Kill()
	<-s.done
}

// Pid is the server's process id.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
