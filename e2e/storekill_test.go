package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
)

// TestStoreKilledMidUpload: the store dies while the shim uploads a snapshot and comes
// back at its address a few seconds later. The pod keeps running; the upload either
// completes (one whole snapshot) or is given up, saying why in one line, with nothing
// half-visible (no manifest); and `podsnapshot gc` then removes every leftover: the
// orphaned files and the upload's temporary parts.
func TestStoreKilledMidUpload(t *testing.T) {
	e := newEnv(t, gcsStore)
	log := e.start("cut", myApp, "slowinit", "-mib", "512", "-seconds", "1", "-checkpoint")
	harness.WaitForOutput(t, log, "checkpoint result: resume", 2*time.Minute)
	e.gcs.Kill(t) // the upload of 512 MiB has only begun
	time.Sleep(3 * time.Second)
	e.gcs.Restart(t)
	var line string
	harness.Eventually(t, 4*time.Minute, "the upload committed or given up", func() bool {
		line = e.logLine("cut", "checkpoint not committed")
		return line != "" || e.logLine("cut", "podsnapshot: committed") != ""
	})
	if line != "" && (strings.Contains(line, "\\n") || len(line) > 2000) {
		t.Fatalf("the shim's error is not one sentence (%d bytes): %s", len(line), line)
	}
	t.Logf("after the store came back: %s", firstNonEmpty(line, e.logLine("cut", "podsnapshot: committed")))
	if r := e.cd.Ctr(t, "task", "exec", "--exec-id", "alive", "cut", "sh", "-c", "exit 3"); r.ExitCode != 3 {
		t.Fatalf("the pod does not run after its upload was cut: %s", r)
	}
	ms := e.snapshots()
	if line != "" && len(ms) != 0 {
		t.Fatalf("a snapshot is visible after its upload was given up: %v", ms)
	}
	time.Sleep(2 * time.Second)
	if out, code := e.cli("gc", "--orphan-ttl", "1s"); code != 0 {
		t.Fatalf("podsnapshot gc: exit %d\n%s", code, out)
	}
	// Left: nothing, or the one whole snapshot (3 image files, index marker, manifest).
	left := e.gcs.Objects(t, "snapshots")
	if want := 5 * len(ms); len(left) != want {
		t.Fatalf("objects left after podsnapshot gc: %d, want %d: %v", len(left), want, left)
	}
	e.remove("cut")
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
