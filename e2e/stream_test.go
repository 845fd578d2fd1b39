package e2e

import (
	"context"
	"os"
	"path"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/storage"
)

// TestStreamedRestoreCorruptFrame: a byte flipped in the last frame of the stored pages,
// which the restored sandbox reads only after runsc restore began. From Cloud Storage
// the frame fails its check twice (fetched again once); from the local store, whose
// object is in memory and so verified whole before the restore (stream.adoptLinked),
// it fails that check and the pod starts cold, saying so. Either way the snapshot is
// marked Failed naming the frame; the workload never reports its memory intact (no
// silently wrong memory); the next pod starts cold.
func TestStreamedRestoreCorruptFrame(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newEnv(t, kind)
		big := []string{"slowinit", "-mib", "128", "-seconds", "1", "-checkpoint"}
		log1 := e.start("orig", myApp, big...)
		harness.WaitForOutput(t, log1, "checkpoint result: resume", time.Minute)
		m := e.committed("orig")
		e.remove("orig")

		pages, x := framedPages(t, m)
		last := x.Len() - 1
		off, size := x.Stored(last, 1)
		flipByte(t, e, pages.Name, off+size/2)

		log2 := e.start("again", myApp, big...)
		why := " failed verification twice"
		if kind == localStore {
			why = ": crc32c mismatch"
		}
		e.awaitFailedFrame(m, last, why)
		time.Sleep(2 * time.Second) // what the workload prints after the failure
		raw, _ := os.ReadFile(log2)
		out := string(raw)
		if strings.Contains(out, "checkpoint result: restore") && strings.Contains(out, "memory ok") {
			t.Fatalf("the restored workload read corrupt memory as intact:\n%s", out)
		}
		if d := e.decision("again"); strings.Contains(d, "cold start") && !strings.Contains(d, "corrupt") {
			t.Fatalf("a cold start after the corrupt frame does not say so: %s", d)
		} else if kind == localStore && !strings.Contains(d, "cold start") {
			t.Fatalf("the local store's corrupt frame, verified before the restore, did not start the pod cold: %s", d)
		}
		t.Logf("the pod restored from the corrupt snapshot: %s", e.decision("again"))
		e.remove("again")

		// The next pod never restores from the Failed snapshot (it may restore from the
		// one the cold-started "again" committed meanwhile).
		e.start("third", myApp, big...)
		if d := e.decision("third"); strings.Contains(d, m.UUID) && !strings.Contains(d, "cold start") {
			t.Fatalf("a pod restores from the Failed snapshot: %s", d)
		}
		e.remove("third")
	})
}

// TestStreamedRestoreCorruptFrameAfterResume: a byte flipped in a frame three quarters
// into 1 GiB of pages, and that frame held back at the store (a proxy in front of
// fake-gcs-server) until the restored pod has resumed (its workload read `restore`): a
// restored pod cannot start cold any more. Then the frame arrives, fails its check twice,
// and the snapshot is marked Failed naming the frame; the sandbox's read of it fails, so
// the pod ends without ever reporting its memory intact, and the shim's log says which
// frame of which object it could not read.
func TestStreamedRestoreCorruptFrameAfterResume(t *testing.T) {
	// Without the hold, the sandbox's page loader can reach the frame before the workload
	// prints, and the pod ends before the test sees it resume.
	e := newEnvWith(t, gcsStore, envOptions{gate: true})
	big := []string{"slowinit", "-mib", "1024", "-seconds", "1", "-checkpoint"}
	log1 := e.start("late-orig", myApp, big...)
	harness.WaitForOutput(t, log1, "checkpoint result: resume", 3*time.Minute)
	m := e.committedWithin("late-orig", 3*time.Minute)
	e.remove("late-orig")

	pages, x := framedPages(t, m)
	bad := x.Len() * 3 / 4
	off, size := x.Stored(bad, 1)
	flipByte(t, e, pages.Name, off+size/2)

	release := e.gate.Hold(pages.Name, off, off+size)
	log2 := e.start("late", myApp, big...)
	harness.WaitForOutput(t, log2, "checkpoint result: ", time.Minute)
	release()
	if out := readFile(log2); !strings.Contains(out, "checkpoint result: restore") {
		t.Fatalf("the pod did not resume from the snapshot (decision: %s); its output:\n%s",
			e.decision("late"), out)
	}
	e.awaitFailedFrame(m, bad, " failed verification twice")
	harness.Eventually(t, time.Minute, "the restored pod ends", func() bool { return e.exitLine("late") != "" })
	if out := readFile(log2); strings.Contains(out, "memory ok") {
		t.Fatalf("the restored workload read corrupt memory as intact:\n%s", out)
	}
	want := "frame " + strconv.Itoa(bad) + " failed verification twice"
	var why string
	for _, line := range strings.Split(e.cd.Logs(), "\n") {
		if strings.Contains(line, "could not read pages.img") && strings.Contains(line, want) {
			why = line
		}
	}
	if why == "" {
		t.Fatalf("the shim's log does not say the sandbox could not read pages.img (%s)", want)
	}
	t.Logf("the restored pod ended: %s; the shim: %s", e.exitLine("late"), why)
	e.remove("late")
}

// framedPages returns snapshot m's pages file and its frame index.
func framedPages(t *testing.T, m *manifest.Manifest) (storage.FileInfo, *storage.FrameIndex) {
	t.Helper()
	for _, f := range m.Files {
		if strings.TrimSuffix(path.Base(f.Name), ".zst") == "pages.img" {
			x, err := storage.NewFrameIndex(f)
			if err != nil {
				t.Fatalf("pages of snapshot %s not framed: %v", m.UUID, err)
			}
			return f, x
		}
	}
	t.Fatalf("snapshot %s has no pages.img", m.UUID)
	return storage.FileInfo{}, nil
}

// awaitFailedFrame waits for snapshot m to be marked Failed, its reason naming frame i
// followed by why (" failed verification twice", ": crc32c mismatch").
func (e *env) awaitFailedFrame(m *manifest.Manifest, i int, why string) {
	e.t.Helper()
	var back *manifest.Manifest
	harness.Eventually(e.t, time.Minute, "snapshot marked Failed", func() bool {
		var err error
		back, err = e.repo.Get(context.Background(), m.Namespace, m.Policy, m.UUID)
		return err == nil && back.State == manifest.StateFailed
	})
	if want := "frame " + strconv.Itoa(i) + why; !strings.Contains(back.Reason, want) {
		e.t.Fatalf("failed snapshot's reason %q does not say %q", back.Reason, want)
	}
}
