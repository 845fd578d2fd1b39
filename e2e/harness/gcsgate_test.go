package harness

import (
	"net/http/httptest"
	"testing"
)

func TestGCSGateHolding(t *testing.T) {
	g := &GCSGate{}
	release := g.Hold("pods/a/pages.img.zst", 100, 200)
	defer release()
	for _, c := range []struct {
		path, rng string
		held      bool
	}{
		{"/download/storage/v1/b/snapshots/o/pods/a/pages.img.zst", "bytes=0-99", false},
		{"/download/storage/v1/b/snapshots/o/pods/a/pages.img.zst", "bytes=0-100", true},
		{"/snapshots/pods/a/pages.img.zst", "bytes=150-160", true},
		{"/snapshots/pods/a/pages.img.zst", "bytes=199-", true},
		{"/snapshots/pods/a/pages.img.zst", "bytes=200-", false},
		{"/snapshots/pods/a/pages.img.zst", "", true}, // the whole object
		{"/snapshots/pods/a/checkpoint.img", "bytes=150-160", false},
		{"/storage/v1/b/snapshots/o/pods/a/pages.img.zst", "", false}, // metadata
		{"/storage/v1/b/snapshots/o/pods/a/pages.img.zst?alt=media", "", true},
	} {
		r := httptest.NewRequest("GET", "http://gcs"+c.path, nil)
		if c.rng != "" {
			r.Header.Set("Range", c.rng)
		}
		if got := g.holding(r) != nil; got != c.held {
			t.Errorf("%s %q: held %v, want %v", c.path, c.rng, got, c.held)
		}
	}
	release()
	release() // a second call is a no-op
}
