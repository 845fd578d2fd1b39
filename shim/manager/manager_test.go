package manager

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBundleStateRoundTrip: what the serving shim writes is what `shim delete` reads, in
// the file and JSON names older serving shims wrote (a node upgraded under running pods).
func TestBundleStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, err := readBundleState(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no state: %v, want ErrNotExist", err)
	}
	want := BundleState{RunscPath: "/usr/local/bin/runsc", RunscRoot: "/run/podsnapshot/runsc",
		RunscFlags: map[string]string{"platform": "systrap"}, Rootfs: "/b/rootfs", WorkDir: "/var/lib/podsnapshot/work"}
	if err := WriteBundleState(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := readBundleState(dir)
	if err != nil || got.RunscPath != want.RunscPath || got.RunscRoot != want.RunscRoot ||
		got.RunscFlags["platform"] != "systrap" || got.Rootfs != want.Rootfs || got.WorkDir != want.WorkDir {
		t.Fatalf("read back %+v, %v; want %+v", got, err, want)
	}
	// As an older shim wrote it.
	old := `{"runscPath":"/r","runscRoot":"/root","rootfs":"/fs","workDir":"/w"}`
	if err := os.WriteFile(filepath.Join(dir, "podsnapshot-state.json"), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := readBundleState(dir); err != nil || got.RunscPath != "/r" || got.RunscRoot != "/root" || got.Rootfs != "/fs" || got.WorkDir != "/w" {
		t.Fatalf("an older shim's state read as %+v, %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "podsnapshot-state.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readBundleState(dir); err == nil {
		t.Fatal("a bad state file read without error")
	}
}

// TestDaemonPath: the serving shim is found next to this binary; missing, the error
// names where it was looked for.
func TestDaemonPath(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	daemon := filepath.Join(filepath.Dir(self), DaemonBinary)
	_, err = daemonPath()
	if _, serr := os.Stat(daemon); serr == nil {
		t.Skipf("%s exists beside the test binary", daemon)
	}
	if err == nil || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), daemon) {
		t.Fatalf("daemonPath without %s: %v", daemon, err)
	}
	if err := os.WriteFile(daemon, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(daemon)
	if got, err := daemonPath(); err != nil || got != daemon {
		t.Fatalf("daemonPath = %q, %v; want %q", got, err, daemon)
	}
}
