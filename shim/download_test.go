package shim

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
)

// pendingDownload is a podSnap whose download runs until it is cancelled, as a stalled
// store would, and then fails.
func pendingDownload() *podSnap {
	ps := &podSnap{namespace: "ns", restore: &manifest.Manifest{UUID: "u1"}, downloaded: make(chan struct{})}
	dctx, cancel := context.WithCancel(context.Background())
	ps.cancelDownload = cancel
	go func() {
		defer close(ps.downloaded)
		<-dctx.Done()
		ps.downloadFailed = "download of snapshot ns/u1 failed: " + dctx.Err().Error()
	}()
	return ps
}

// TestAwaitDownloadGivesUpWithItsCaller: a Start whose context ends stops waiting for a
// stalled download, cancels it and says why.
func TestAwaitDownloadGivesUpWithItsCaller(t *testing.T) {
	ps := pendingDownload()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	why, ok := ps.awaitDownload(ctx)
	if ok || !strings.Contains(why, "gave up waiting for the download of snapshot ns/u1") {
		t.Fatalf("awaitDownload = %q, %v; want a give-up reason", why, ok)
	}
	select {
	case <-ps.downloaded:
	default:
		t.Fatal("the download still runs after awaitDownload gave up")
	}
}

// TestAbortDownload: Kill of a sandbox that never started cancels its download, and the
// waiting Start learns that it failed.
func TestAbortDownload(t *testing.T) {
	ps := pendingDownload()
	ps.abortDownload()
	why, ok := ps.awaitDownload(context.Background())
	if ok || !strings.Contains(why, "context canceled") {
		t.Fatalf("awaitDownload after abortDownload = %q, %v", why, ok)
	}
	if !ps.stopDownload() {
		t.Fatal("stopDownload of an ended download reports it running")
	}
	var none *podSnap
	none.abortDownload() // a container without a snapshot: nothing to do
	if why, ok := (&podSnap{}).awaitDownload(context.Background()); !ok || why != "" {
		t.Fatalf("awaitDownload without a download = %q, %v", why, ok)
	}
}
