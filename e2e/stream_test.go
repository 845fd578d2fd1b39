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
// which the restored sandbox reads only after runsc restore began. The frame fails its
// check twice (fetched again once); the snapshot is marked Failed naming the frame; the
// workload never reports its memory intact (no silently wrong memory); the next pod
// starts cold.
func TestStreamedRestoreCorruptFrame(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newEnv(t, kind)
		big := []string{"slowinit", "-mib", "128", "-seconds", "1", "-checkpoint"}
		log1 := e.start("orig", myApp, big...)
		harness.WaitForOutput(t, log1, "checkpoint result: resume", time.Minute)
		m := e.committed("orig")
		e.remove("orig")

		var pages storage.FileInfo
		for _, f := range m.Files {
			if strings.TrimSuffix(path.Base(f.Name), ".zst") == "pages.img" {
				pages = f
			}
		}
		x, err := storage.NewFrameIndex(pages)
		if err != nil {
			t.Fatalf("pages of snapshot %s not framed: %v", m.UUID, err)
		}
		last := x.Len() - 1
		off, size := x.Stored(last, 1)
		flipByte(t, e, pages.Name, off+size/2)

		log2 := e.start("again", myApp, big...)
		var back *manifest.Manifest
		harness.Eventually(t, time.Minute, "snapshot marked Failed", func() bool {
			back, err = e.repo.Get(context.Background(), m.Namespace, m.Policy, m.UUID)
			return err == nil && back.State == manifest.StateFailed
		})
		if want := "frame " + strconv.Itoa(last) + " failed verification twice"; !strings.Contains(back.Reason, want) {
			t.Fatalf("failed snapshot's reason %q does not say %q", back.Reason, want)
		}
		time.Sleep(2 * time.Second) // what the workload prints after the failure
		raw, _ := os.ReadFile(log2)
		out := string(raw)
		if strings.Contains(out, "checkpoint result: restore") && strings.Contains(out, "memory ok") {
			t.Fatalf("the restored workload read corrupt memory as intact:\n%s", out)
		}
		if d := e.decision("again"); strings.Contains(d, "cold start") && !strings.Contains(d, "corrupt") {
			t.Fatalf("a cold start after the corrupt frame does not say so: %s", d)
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
