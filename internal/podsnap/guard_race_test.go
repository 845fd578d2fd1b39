package podsnap

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podsnapshot/podsnapshot/storage"
)

// TestCorruptAfterResumeNoManifestRace: a streamed restore whose first frame is
// corrupt in storage (same size: checkSize passes). The pod resumes; logRestored and
// touchLater read the pod's manifest (`m := *shared`) while the fill's goroutine runs
// OnCorrupt -> MarkFailed on that same manifest (m.State, m.Reason): run with -race
// (the race is reported in about 1 run of 3 here; TestReviewStreamCorruptLeavesCallersManifest
// in checkpoint/repo shows it every time).
func TestCorruptAfterResumeNoManifestRace(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	e.cfg.StreamRestore = true
	m := streamedSnapshot(t, e)
	for _, f := range m.Files {
		if strings.Contains(f.Name, "pages.img") {
			x, err := storage.NewFrameIndex(f)
			must(t, err)
			off, _ := x.Stored(x.Len()-1, 1)
			path := filepath.Join(e.store, f.Name)
			b, err := os.ReadFile(path)
			must(t, err)
			b[off+10] ^= 0x40
			must(t, os.WriteFile(path, b, 0o600))
		}
	}
	_, sb := startStreamed(t, e, "late")
	if rs := e.waitReports("late", 3); kinds(rs) != "Restored, SnapshotFailed, RestoredPodStopped" {
		t.Fatalf("reports: %s", kinds(rs))
	}
	eventually(t, "the sandbox killed", func() bool { return strings.Contains(sb.callLog(), "kill 9") })
}
