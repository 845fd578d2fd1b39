package harness

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// GCSGate is an HTTP proxy in front of a FakeGCS that can hold back the reads of one byte
// range of one object: a test decides when a frame of a snapshot arrives at the shim,
// instead of racing the sandbox's page loader. Everything else passes through at once.
// Point the shim at it with Env (STORAGE_EMULATOR_HOST is plain HTTP).
type GCSGate struct {
	// Host is "127.0.0.1:PORT", the proxy's address.
	Host string
	holder
}

// heldRange is [off, end) of the object named object; reads intersecting it wait for open
// to close.
type heldRange struct {
	object   string
	off, end int64
	open     chan struct{}
	once     sync.Once
}

// holder keeps the one range a gate holds back (GCSGate, GatedDir).
type holder struct {
	mu sync.Mutex
	// held is the range being held back and its release channel; nil: nothing held.
	held *heldRange // guarded by mu
}

// Hold makes reads of object (its name relative to the store's root) that intersect the
// bytes [off, end) wait until the returned release is called (any number of times; the
// gate's cleanup calls it too). One range is held at a time.
func (h *holder) Hold(object string, off, end int64) (release func()) {
	r := &heldRange{object: object, off: off, end: end, open: make(chan struct{})}
	h.mu.Lock()
	h.held = r
	h.mu.Unlock()
	return func() { r.once.Do(func() { close(r.open) }) }
}

// current is the range held, or nil.
func (h *holder) current() *heldRange {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held
}

// release lets go of the range held, if any.
func (h *holder) release() {
	if r := h.current(); r != nil {
		r.once.Do(func() { close(r.open) })
	}
}

// NewGCSGate starts a proxy to f on 127.0.0.1 at a free port; it stops at cleanup, after
// releasing whatever it holds.
func NewGCSGate(t testing.TB, f *FakeGCS) *GCSGate {
	t.Helper()
	g := &GCSGate{}
	g.Host = startGCSProxy(t, f.URL, "127.0.0.1", func(w http.ResponseWriter, r *http.Request, proxy http.Handler) {
		if h := g.holding(r); h != nil {
			select {
			case <-h.open:
			case <-r.Context().Done():
				return
			}
		}
		proxy.ServeHTTP(w, r)
	})
	t.Cleanup(g.release) // before the server's close (cleanups run last first)
	return g
}

// startGCSProxy serves handle on a free port of ip, in front of fake-gcs-server at
// targetURL (handle calls proxy to pass a request on), until cleanup; it returns the
// proxy's "IP:PORT".
func startGCSProxy(t testing.TB, targetURL, ip string, handle func(w http.ResponseWriter, r *http.Request, proxy http.Handler)) string {
	t.Helper()
	target, err := url.Parse(targetURL)
	if err != nil {
		t.Fatalf("harness: fake-gcs-server URL %q: %v", targetURL, err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("harness: listen for a proxy to fake-gcs-server: %v", err)
	}
	// SetURL also sets the Host header to the server's: fake-gcs-server routes XML API
	// reads (GET /BUCKET/NAME) by it and answers 404 for another host.
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target) }}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handle(w, r, proxy) })}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// GCSReads is a proxy in front of fake-gcs-server that counts the bytes of object
// reads it passes, per client address and object: a test tells which node downloaded
// what (each node of internal/testenv/kube has an address of its own).
type GCSReads struct {
	// Host is "IP:PORT", the proxy's address, for STORAGE_EMULATOR_HOST.
	Host string

	mu    sync.Mutex
	bytes map[[2]string]int64 // {client IP, object path} -> bytes read (mu)
}

// NewGCSReads starts a GCSReads on ip (such as the nodes' bridge) in front of
// fake-gcs-server at targetURL; it stops at cleanup.
func NewGCSReads(t testing.TB, targetURL, ip string) *GCSReads {
	t.Helper()
	g := &GCSReads{bytes: map[[2]string]int64{}}
	g.Host = startGCSProxy(t, targetURL, ip, func(w http.ResponseWriter, r *http.Request, proxy http.Handler) {
		if r.Method != http.MethodGet || (strings.HasPrefix(r.URL.Path, "/storage/v1/") && r.URL.Query().Get("alt") != "media") {
			proxy.ServeHTTP(w, r) // not an object's bytes
			return
		}
		cw := &countingWriter{ResponseWriter: w}
		proxy.ServeHTTP(cw, r)
		client, _, _ := net.SplitHostPort(r.RemoteAddr)
		g.mu.Lock()
		g.bytes[[2]string{client, r.URL.Path}] += cw.n
		g.mu.Unlock()
	})
	return g
}

// Bytes returns the bytes client read of objects whose path ends in suffix.
func (g *GCSReads) Bytes(client, suffix string) int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	var n int64
	for k, b := range g.bytes {
		if k[0] == client && strings.HasSuffix(k[1], suffix) {
			n += b
		}
	}
	return n
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

// Env returns STORAGE_EMULATOR_HOST=Host, for ContainerdOptions.Env.
func (g *GCSGate) Env() string { return "STORAGE_EMULATOR_HOST=" + g.Host }

// holding returns the held range r must wait for, or nil. A read of the object's bytes
// is held when its path names the object (decoded, the JSON API's
// /download/storage/v1/b/B/o/NAME?alt=media and the XML API's /B/NAME) and its Range
// header intersects the range; a read without a Range header (the whole object)
// intersects any range. The object's metadata (/storage/v1/b/B/o/NAME without
// alt=media) is never held.
func (g *GCSGate) holding(r *http.Request) *heldRange {
	h := g.current()
	if h == nil || r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, h.object) {
		return nil
	}
	if strings.HasPrefix(r.URL.Path, "/storage/v1/") && r.URL.Query().Get("alt") != "media" {
		return nil
	}
	off, end, ok := parseRange(r.Header.Get("Range"))
	if !ok {
		return h
	}
	if off < h.end && (end < 0 || end > h.off) {
		return h
	}
	return nil
}

// parseRange reads "bytes=A-B" (B inclusive) or "bytes=A-" into [A, B+1) or [A, -1).
// ok is false without a single range of that form.
func parseRange(v string) (off, end int64, ok bool) {
	spec, found := strings.CutPrefix(v, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false
	}
	a, b, found := strings.Cut(spec, "-")
	if !found {
		return 0, 0, false
	}
	off, err := strconv.ParseInt(a, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	if b == "" {
		return off, -1, true
	}
	last, err := strconv.ParseInt(b, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	return off, last + 1, true
}
