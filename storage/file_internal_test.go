package storage

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHashMappedFault: reading past the end of a mapped file faults (SIGBUS); the hash
// returns an error instead of the process dying, as it would if the file shrank while
// it was verified.
func TestHashMappedFault(t *testing.T) {
	page := os.Getpagesize()
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, make([]byte, page), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = hashMapped(context.Background(), f, int64(3*page)) // two pages past the end
	if err == nil || !strings.Contains(err.Error(), "read fault") {
		t.Fatalf("hashMapped past the end of the file: %v; want a read fault error", err)
	}
	if _, err := hashMapped(context.Background(), f, int64(page)); err != nil {
		t.Fatalf("hashMapped of the whole file: %v", err)
	}
}
