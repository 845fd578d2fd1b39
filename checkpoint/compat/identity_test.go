package compat

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRunscIdentity(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	bin := filepath.Join(dir, "runsc")
	if err := os.WriteFile(bin, []byte("a runsc build"), 0o755); err != nil {
		t.Fatal(err)
	}
	cacheFile := filepath.Join(dir, "work", "runsc-identity")
	calls := 0
	version := func(line string) func(context.Context) (string, error) {
		return func(context.Context) (string, error) { calls++; return line, nil }
	}

	got, err := RunscIdentity(ctx, bin, version("runsc version VERSION_MISSING"), cacheFile)
	sum := sha256.Sum256([]byte("a runsc build"))
	want := fmt.Sprintf("runsc version VERSION_MISSING+sha256:%x", sum[:8])
	if err != nil || got != want || calls != 1 {
		t.Fatalf("RunscIdentity = %q, %v (%d version calls); want %q", got, err, calls, want)
	}

	// The same binary: the cache answers, version is not asked.
	failing := func(context.Context) (string, error) { return "", errors.New("must not run") }
	if got, err := RunscIdentity(ctx, bin, failing, cacheFile); err != nil || got != want {
		t.Fatalf("cached RunscIdentity = %q, %v; want %q", got, err, want)
	}

	// Another build at the same path (size and mtime change): asked again; a versioned
	// build is its version line alone.
	if err := os.WriteFile(bin, []byte("a newer runsc build"), 0o755); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(bin, later, later); err != nil {
		t.Fatal(err)
	}
	if got, err := RunscIdentity(ctx, bin, version("runsc version release-20260101.0"), cacheFile); err != nil || got != "runsc version release-20260101.0" || calls != 2 {
		t.Fatalf("new build: RunscIdentity = %q, %v (%d version calls)", got, err, calls)
	}
	if data, _ := os.ReadFile(cacheFile); !strings.Contains(string(data), "runsc version release-20260101.0") {
		t.Errorf("cache file holds %q", data)
	}
	if left, _ := filepath.Glob(cacheFile + ".*"); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// Errors: version's as it is; a missing binary named.
	verr := errors.New("runsc: exec format error")
	if err := os.WriteFile(cacheFile, []byte("stale"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := RunscIdentity(ctx, bin, func(context.Context) (string, error) { return "", verr }, cacheFile); !errors.Is(err, verr) {
		t.Errorf("version error: %v", err)
	}
	missing := filepath.Join(dir, "no-runsc")
	if _, err := RunscIdentity(ctx, missing, failing, cacheFile); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing binary: %v", err)
	}
}
