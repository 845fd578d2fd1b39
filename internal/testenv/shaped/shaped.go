// Package shaped is a store that behaves like Cloud Storage seen from a VM in the
// bucket's region, for benchmarks: an HTTP reverse proxy in front of fake-gcs-server that
// adds what a loopback emulator lacks, a first-byte latency on every response, a
// bandwidth limit per TCP connection and a bandwidth cap across all connections. Point
// STORAGE_EMULATOR_HOST (or a store's endpoint) at Proxy.Addr instead of the emulator.
//
// Defaults (Defaults) come from published figures where there are any:
//
//   - per connection: the gcsfuse project's fio benchmarks on an n2-standard-96 VM in
//     us-west1 reading a bucket in us-west1 (sequential reads of 1 GiB files, 1 MiB
//     blocks, 128 threads, gcsfuse --max-conns-per-host=100): 7741 MiB/s in all, about
//     60 MiB/s per thread and so at least that per connection
//     (https://github.com/GoogleCloudPlatform/gcsfuse/blob/master/docs/benchmarks.md,
//     the revision with the n2-standard-96 setup; later revisions moved to a
//     c4-standard-192 with Tier_1 networking and report no per-connection figure). We use
//     60 MB/s.
//   - total: Compute Engine's per-VM bandwidth, "generally 2 Gbps per vCPU"
//     (https://cloud.google.com/compute/docs/network-bandwidth); for the 2-vCPU machine
//     these benchmarks run on, 4 Gbps = 500 MB/s. The page states egress limits; we
//     apply the same figure to ingress (downloads), which is our choice.
//   - first-byte latency: we found no published time-to-first-byte figure for Cloud
//     Storage within a region. The same gcsfuse table reports an average latency of
//     20.9 ms for a 128 KiB read of a 128 KiB file (one whole-object GET through FUSE,
//     transfer included), an upper bound; we use 20 ms, our own conservative choice.
//
// The limits are per direction: a connection may receive request bodies at the
// per-connection rate while it sends responses at the same rate, and the total cap is
// likewise one for all downloads and one for all uploads.
package shaped

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// Published defaults; see the package doc for their sources.
const (
	// DefaultLatency is our own choice (no published figure found), 20 ms.
	DefaultLatency = 20 * time.Millisecond
	// DefaultConnBytesPerSec is 60 MB/s per connection, from gcsfuse's benchmarks
	// (https://github.com/GoogleCloudPlatform/gcsfuse/blob/master/docs/benchmarks.md).
	DefaultConnBytesPerSec = 60e6
	// DefaultTotalBytesPerSec is 500 MB/s, 2 Gbps per vCPU of a 2-vCPU VM
	// (https://cloud.google.com/compute/docs/network-bandwidth).
	DefaultTotalBytesPerSec = 500e6
)

// Options shape the proxy; a zero field is no shaping of that kind.
type Options struct {
	// Latency is the first-byte latency: a response's headers leave the proxy no
	// sooner than Latency after the whole request (headers and body) arrived.
	Latency time.Duration
	// ConnBytesPerSec limits each TCP connection of a client, in bytes per second, in
	// each direction: response bytes sent and request bytes received.
	ConnBytesPerSec float64
	// TotalBytesPerSec caps all connections together, in bytes per second, in each
	// direction.
	TotalBytesPerSec float64
}

// Defaults returns the published (or, for the latency, our own) figures of the package
// doc.
func Defaults() Options {
	return Options{Latency: DefaultLatency, ConnBytesPerSec: DefaultConnBytesPerSec, TotalBytesPerSec: DefaultTotalBytesPerSec}
}

// String describes the options for reports, e.g. "first byte 20 ms, 60 MB/s per
// connection, 500 MB/s in all".
func (o Options) String() string {
	rate := func(v float64) string {
		if v <= 0 {
			return "unlimited"
		}
		return fmt.Sprintf("%g MB/s", v/1e6)
	}
	return fmt.Sprintf("first byte %g ms, %s per connection, %s in all", float64(o.Latency)/float64(time.Millisecond), rate(o.ConnBytesPerSec), rate(o.TotalBytesPerSec))
}

// Proxy is a running shaped store.
type Proxy struct {
	// Addr is "127.0.0.1:PORT", the value for STORAGE_EMULATOR_HOST.
	Addr string
	// URL is "http://" + Addr.
	URL string

	srv      *http.Server
	upstream *http.Transport // its idle connections to the emulator go with Close
	stop     func() bool     // stops the context watch
}

// Start serves a proxy on a free port of 127.0.0.1 that forwards every request to
// upstream ("http://host:port" or "host:port", plain HTTP), shaped by opts. It stops
// when ctx ends or Close is called. It fails for an upstream that is not such an
// address, or when it cannot listen.
func Start(ctx context.Context, upstream string, opts Options) (*Proxy, error) {
	if !strings.Contains(upstream, "://") {
		upstream = "http://" + upstream
	}
	target, err := url.Parse(upstream)
	if err != nil || target.Host == "" || target.Scheme != "http" {
		return nil, fmt.Errorf("shaped store: upstream %q: want http://host:port", upstream)
	}
	if opts.Latency < 0 || opts.ConnBytesPerSec < 0 || opts.TotalBytesPerSec < 0 {
		return nil, fmt.Errorf("shaped store: negative option in %+v", opts)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("shaped store: listen: %w", err)
	}
	toEmulator := &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	rp := &httputil.ReverseProxy{
		// SetURL also sets the Host header to the emulator's: fake-gcs-server routes
		// XML API reads (GET /BUCKET/NAME), which the Go client makes, by it and answers
		// 404 for another host. URLs it builds itself (resumable upload sessions, from
		// its -external-url) lead past the proxy; the shim uploads every object in one
		// request (storage/gcs: ChunkSize 0), so none of its bytes go that way.
		Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: &latencyTransport{
			base:    toEmulator,
			latency: opts.Latency,
		},
		// Copy as bytes arrive: the per-connection pacing is the client's only limit.
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, "shaped store: %v\n", err)
		},
	}
	sl := &shapedListener{Listener: ln, opts: opts,
		totalIn: newBucket(opts.TotalBytesPerSec), totalOut: newBucket(opts.TotalBytesPerSec)}
	p := &Proxy{Addr: ln.Addr().String(), upstream: toEmulator, srv: &http.Server{Handler: rp, ReadHeaderTimeout: time.Minute}}
	p.URL = "http://" + p.Addr
	go func() { _ = p.srv.Serve(sl) }()
	p.stop = context.AfterFunc(ctx, func() { _ = p.srv.Close() })
	return p, nil
}

// Close stops the proxy and closes its connections.
func (p *Proxy) Close() error {
	p.stop()
	defer p.upstream.CloseIdleConnections()
	if err := p.srv.Close(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shaped store: close: %w", err)
	}
	return nil
}

// latencyTransport holds each response back until latency has passed since its
// request's body was read to the end (or, without a body, since the request was sent).
type latencyTransport struct {
	base    http.RoundTripper
	latency time.Duration
}

func (t *latencyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	sent := time.Now()
	var body *doneReader
	if req.Body != nil && req.Body != http.NoBody {
		body = &doneReader{r: req.Body}
		req.Body = body
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil || t.latency <= 0 {
		return resp, err
	}
	from := sent
	if body != nil {
		if ns := body.done.Load(); ns != 0 {
			from = time.Unix(0, ns)
		}
	}
	if wait := time.Until(from.Add(t.latency)); wait > 0 {
		timer := time.NewTimer(wait)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-req.Context().Done():
			resp.Body.Close()
			return nil, req.Context().Err()
		}
	}
	return resp, nil
}

// doneReader notes when its reader reached EOF. The emulator answers a request once its
// body is in, so done is normally set by the time the response returns; the transport
// reads the body on a goroutine of its own, hence the atomic.
type doneReader struct {
	r    io.ReadCloser
	done atomic.Int64 // Unix nanoseconds of EOF; 0: not yet
}

func (d *doneReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err == io.EOF {
		d.done.CompareAndSwap(0, time.Now().UnixNano())
	}
	return n, err
}

func (d *doneReader) Close() error { return d.r.Close() }

// shapedListener paces every connection it accepts: its own buckets, and the total
// ones all connections share.
type shapedListener struct {
	net.Listener
	opts              Options
	totalIn, totalOut *bucket // nil: unlimited
}

func (l *shapedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &shapedConn{Conn: c, l: l, in: newBucket(l.opts.ConnBytesPerSec), out: newBucket(l.opts.ConnBytesPerSec)}, nil
}

// chunk is the most bytes one Read or Write moves between two pacing decisions: small
// enough that connections sharing the total cap interleave finely.
const chunk = 32 << 10

// shapedConn is one client connection: what it reads (requests) is paced by in and the
// total in-bucket after it arrives, which holds back the next read and so the sender
// through TCP's window; what it writes (responses) by out and the total out-bucket
// before it leaves.
type shapedConn struct {
	net.Conn
	l       *shapedListener
	in, out *bucket
}

func (c *shapedConn) Read(p []byte) (int, error) {
	if len(p) > chunk {
		p = p[:chunk]
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		pace(n, c.in, c.l.totalIn)
	}
	return n, err
}

func (c *shapedConn) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		k := min(len(p), chunk)
		pace(k, c.out, c.l.totalOut)
		n, err := c.Conn.Write(p[:k])
		written += n
		if err != nil {
			return written, err
		}
		p = p[k:]
	}
	return written, nil
}
