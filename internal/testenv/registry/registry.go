// Package registry runs an OCI image registry for the tests: go-containerregistry's
// pkg/registry (the registry server crane's own tests use: the distribution API, blobs
// and manifests in memory), served over plain HTTP on an address the caller picks, such
// as the Kubernetes nodes' bridge (internal/testenv/kube: Cluster.BridgeIP), from which
// `make push` pushes and the nodes' containerd pulls.
package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"time"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
)

// Server is a running registry; Close stops it.
type Server struct {
	// Host is "IP:PORT", the registry part of an image reference.
	Host string

	srv *http.Server
	mu  sync.Mutex
	log []string // "METHOD PATH STATUS" of every request (mu)
}

// Start serves a registry on a free port of ip.
func Start(ip string) (*Server, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	s := &Server{Host: ln.Addr().String()}
	h := ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)))
	s.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		s.mu.Lock()
		s.log = append(s.log, fmt.Sprintf("%s %s %d", r.Method, r.URL.Path, rec.status))
		s.mu.Unlock()
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("registry %s: %v", s.Host, err)
		}
	}()
	return s, nil
}

// Requests returns "METHOD PATH STATUS" of every request so far, in order.
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}

// Close stops the server (open connections included).
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.srv.Shutdown(ctx)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}
