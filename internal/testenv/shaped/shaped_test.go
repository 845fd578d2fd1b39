package shaped

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// upstream serves GET /bytes?n=N (N zero bytes) and POST /sink (reads the body, answers
// its length).
func upstream(t *testing.T) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/bytes":
			n, _ := strconv.Atoi(r.URL.Query().Get("n"))
			w.Header().Set("Content-Length", strconv.Itoa(n))
			_, _ = w.Write(make([]byte, n))
		case "/sink":
			n, _ := io.Copy(io.Discard, r.Body)
			_, _ = io.WriteString(w, strconv.FormatInt(n, 10))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func start(t *testing.T, opts Options) *Proxy {
	t.Helper()
	up := upstream(t)
	p, err := Start(context.Background(), up.URL, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// get fetches n bytes through p on a connection of its own and returns how long it took.
func get(t *testing.T, p *Proxy, n int) time.Duration {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	t0 := time.Now()
	resp, err := c.Get(p.URL + "/bytes?n=" + strconv.Itoa(n))
	if err != nil {
		t.Error(err)
		return 0
	}
	defer resp.Body.Close()
	got, err := io.Copy(io.Discard, resp.Body)
	if err != nil || got != int64(n) {
		t.Errorf("GET %d bytes: got %d, %v", n, got, err)
	}
	return time.Since(t0)
}

// within fails unless got is between 85% and 300% of want: a limit that holds keeps a
// transfer from being faster (the burst allows a few percent), while a machine shared
// with other tests (and the race detector, on 2 cores) can make it much slower; the
// upper bound only catches a proxy that stalls.
func within(t *testing.T, what string, got, want time.Duration) {
	t.Helper()
	lo, hi := want*85/100, want*3
	if got < lo || got > hi {
		t.Errorf("%s took %v, want %v to %v", what, got, lo, hi)
	}
}

func TestLatencyPerRequest(t *testing.T) {
	p := start(t, Options{Latency: 150 * time.Millisecond})
	// One connection, several requests: each response waits on its own.
	c := &http.Client{}
	for i := 0; i < 3; i++ {
		t0 := time.Now()
		resp, err := c.Get(p.URL + "/bytes?n=10")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if d := time.Since(t0); d < 150*time.Millisecond || d > time.Second {
			t.Errorf("request %d took %v, want 150 ms to 1 s", i, d)
		}
	}
}

func TestPerConnectionRate(t *testing.T) {
	// 1 MB at 2 MB/s per connection: 0.5 s each, also two at once (no total cap).
	p := start(t, Options{ConnBytesPerSec: 2e6})
	within(t, "one GET of 1 MB", get(t, p, 1e6), 500*time.Millisecond)
	var wg sync.WaitGroup
	took := make([]time.Duration, 2)
	for i := range took {
		wg.Add(1)
		go func() { defer wg.Done(); took[i] = get(t, p, 1e6) }()
	}
	wg.Wait()
	for i, d := range took {
		within(t, "GET "+strconv.Itoa(i)+" of two on their own connections", d, 500*time.Millisecond)
	}
}

func TestTotalRate(t *testing.T) {
	// Two connections of 4 MB/s each under a 2 MB/s cap: 2 MB in all take 1 s.
	p := start(t, Options{ConnBytesPerSec: 4e6, TotalBytesPerSec: 2e6})
	t0 := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); get(t, p, 1e6) }()
	}
	wg.Wait()
	within(t, "two GETs of 1 MB at once", time.Since(t0), time.Second)
}

func TestUploadRate(t *testing.T) {
	// A request body of 1 MB at 2 MB/s per connection: 0.5 s.
	p := start(t, Options{ConnBytesPerSec: 2e6})
	t0 := time.Now()
	resp, err := http.Post(p.URL+"/sink", "application/octet-stream", bytes.NewReader(make([]byte, 1e6)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "1000000" {
		t.Fatalf("upstream read %q bytes, want 1000000", body)
	}
	within(t, "POST of 1 MB", time.Since(t0), 500*time.Millisecond)
}

func TestStartRefusesBadUpstream(t *testing.T) {
	if _, err := Start(context.Background(), "https://example.com", Options{}); err == nil {
		t.Error("Start accepted an https upstream")
	}
}
