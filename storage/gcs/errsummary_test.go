package gcs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	gcs "cloud.google.com/go/storage"
	"google.golang.org/api/option"
)

// TestCleanupErrorOneLine: the cleanup of an upload whose store went away fails each of
// its deletes; the error is one line with the first cause and a count, not 27 lines, and
// errors.Is still sees the causes.
func TestCleanupErrorOneLine(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there now: every request is refused
	ctx := context.Background()
	c, err := gcs.NewClient(ctx, option.WithEndpoint("http://"+dead+"/storage/v1/"), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	u := &upload{s: New(c, "snapshots", "p"), id: "0123"}
	objs := map[string]int64{}
	for i := range 27 {
		objs[fmt.Sprintf("p/.podsnapshot-tmp/0123/p%05d", i)] = int64(i + 1)
	}
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	cerr := u.deleteAll(dctx, objs)
	if cerr == nil {
		t.Fatal("deletes on a dead store: no error")
	}
	msg := cerr.Error()
	t.Logf("cleanup error (%d bytes): %s", len(msg), msg)
	if strings.Contains(msg, "\n") || len(msg) > 1000 || !strings.Contains(msg, "and 26 more") {
		t.Errorf("cleanup error is not one line with a count: %d bytes, %q", len(msg), msg)
	}

	part := fmt.Errorf("gs://snapshots/p/x: part p/.podsnapshot-tmp/0123/p00003: %w", context.DeadlineExceeded)
	err = &cleanupFailed{err: part, cleanup: cerr}
	msg = err.Error()
	if strings.Contains(msg, "\n") || !strings.HasPrefix(msg, part.Error()+" (and 27 temporary objects") {
		t.Errorf("upload error: %q", msg)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is(%v, DeadlineExceeded) = false", err)
	}
}

func TestSummarize(t *testing.T) {
	a, b := errors.New("a"), errors.New("b")
	if summarize(nil, "x") != nil {
		t.Error("no errors: not nil")
	}
	if got := summarize([]error{a}, "x"); got != a {
		t.Errorf("one error: %v", got)
	}
	got := summarize([]error{a, b, b}, "parts failed")
	if got.Error() != "a (and 2 more parts failed)" || !errors.Is(got, b) {
		t.Errorf("three errors: %q", got)
	}
}
