package report

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWriteListRemove(t *testing.T) {
	s := Spool{Dir: filepath.Join(t.TempDir(), "spool")}
	if entries, bad, err := s.List(); err != nil || len(entries) != 0 || len(bad) != 0 {
		t.Fatalf("missing spool: %v, %v, %v", entries, bad, err)
	}
	t0 := time.Unix(1700000000, 0)
	for i, k := range []Kind{ColdStart, CheckpointStarted, CheckpointCommitted} {
		if err := s.Write(Report{Time: t0.Add(time.Duration(i) * time.Second), Kind: k, Pod: Pod{Namespace: "ns", Name: "p"}}); err != nil {
			t.Fatal(err)
		}
	}
	// Neither a temporary nor a report moved aside is listed.
	must(t, os.WriteFile(filepath.Join(s.Dir, ".tmp-1"), []byte("{"), 0o600))
	must(t, os.WriteFile(filepath.Join(s.Dir, ".bad-x.json"), []byte("{"), 0o600))
	entries, bad, err := s.List()
	if err != nil || len(bad) != 0 || len(entries) != 3 {
		t.Fatalf("List = %d entries, bad %v, %v", len(entries), bad, err)
	}
	for i, k := range []Kind{ColdStart, CheckpointStarted, CheckpointCommitted} {
		if entries[i].Report.Kind != k {
			t.Fatalf("entry %d is %s, want %s (written order)", i, entries[i].Report.Kind, k)
		}
	}
	must(t, s.Remove(entries[0].Name))
	must(t, s.Remove(entries[0].Name)) // gone already: not an error
	if entries, _, _ := s.List(); len(entries) != 2 {
		t.Fatalf("after Remove: %d entries", len(entries))
	}
}

// A spool at Max drops its oldest reports before a new one is written, and only reports.
func TestWriteKeepsAtMostMax(t *testing.T) {
	s := Spool{Dir: t.TempDir(), Max: 3}
	must(t, os.WriteFile(filepath.Join(s.Dir, ".bad-old.json"), []byte("{"), 0o600))
	t0 := time.Unix(1700000000, 0)
	for i := range 5 {
		must(t, s.Write(Report{Time: t0.Add(time.Duration(i) * time.Second), Kind: ColdStart, Message: string(rune('a' + i))}))
	}
	entries, _, err := s.List()
	must(t, err)
	if len(entries) != 3 || entries[0].Report.Message != "c" || entries[2].Report.Message != "e" {
		t.Fatalf("spool holds %+v; want the 3 newest (c, d, e)", entries)
	}
	if _, err := os.Stat(filepath.Join(s.Dir, ".bad-old.json")); err != nil {
		t.Fatalf("trim removed a file that is not a report: %v", err)
	}

	// A spool already over its bound (Max lowered) is trimmed to Max-1 before the write.
	s.Max = 2
	must(t, s.Write(Report{Time: t0.Add(time.Minute), Kind: Restored}))
	entries, _, _ = s.List()
	if len(entries) != 2 || entries[0].Report.Message != "e" || entries[1].Report.Kind != Restored {
		t.Fatalf("after lowering Max: %+v", entries)
	}

	// No bound: nothing is removed.
	s.Max = 0
	for range 3 {
		must(t, s.Write(Report{Kind: ColdStart}))
	}
	if entries, _, _ := s.List(); len(entries) != 5 {
		t.Fatalf("unbounded spool holds %d reports, want 5", len(entries))
	}
}

func TestWriteErrorNamesTheSpool(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	must(t, os.WriteFile(file, nil, 0o600))
	s := Spool{Dir: filepath.Join(file, "spool"), Max: 10}
	if err := s.Write(Report{Kind: ColdStart}); err == nil || !strings.Contains(err.Error(), s.Dir) {
		t.Fatalf("Write into a spool under a file: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestPruneSetAside: set-aside reports modified before the cut are removed, then the
// oldest until max remain; SetAside dates a report from when it was set aside (an old
// report set aside now is not pruned at once); reports and temporaries are left alone.
func TestPruneSetAside(t *testing.T) {
	s := Spool{Dir: t.TempDir()}
	now := time.Now()
	for i := 0; i < 5; i++ {
		p := filepath.Join(s.Dir, fmt.Sprintf(".refused-%020d-aaaaaaaa.json", i))
		must(t, os.WriteFile(p, []byte("{}"), 0o600))
		at := now.Add(time.Duration(i-10) * time.Minute)
		must(t, os.Chtimes(p, at, at))
	}
	long := now.Add(-48 * time.Hour)
	must(t, s.Write(Report{Time: long, Kind: ColdStart, Pod: Pod{Namespace: "ns", Name: "p"}}))
	entries, _, err := s.List()
	must(t, err)
	must(t, os.Chtimes(filepath.Join(s.Dir, entries[0].Name), long, long))
	must(t, s.SetAside(entries[0].Name, "bad"))
	tmp := filepath.Join(s.Dir, ".tmp-1")
	must(t, os.WriteFile(tmp, nil, 0o600))
	must(t, os.Chtimes(tmp, long, long))
	must(t, s.Write(Report{Kind: ColdStart, Pod: Pod{Namespace: "ns", Name: "q"}}))

	n, err := s.PruneSetAside(now.Add(-9*time.Minute-30*time.Second), 3)
	must(t, err)
	des, err := os.ReadDir(s.Dir)
	must(t, err)
	var left []string
	for _, de := range des {
		left = append(left, de.Name())
	}
	// Removed: refused 0 (before the cut), then refused 1 and 2 (the oldest past 3 kept).
	want := []string{".bad-" + entries[0].Name, ".refused-00000000000000000003-aaaaaaaa.json", ".refused-00000000000000000004-aaaaaaaa.json", ".tmp-1"}
	if n != 3 || len(left) != len(want)+1 || strings.Join(left[:len(want)], " ") != strings.Join(want, " ") {
		t.Fatalf("removed %d, left %q; want 3 removed and %q plus the report", n, left, want)
	}
}

// TestTrimDropsEventOnlyFirst: a full spool drops the reports whose loss costs only an
// event (ColdStart, CheckpointStarted, RestoredPodStopped) before older ones that carry
// state (CheckpointCommitted, CheckpointFailed, Restored, SnapshotDeleted).
func TestTrimDropsEventOnlyFirst(t *testing.T) {
	s := Spool{Dir: t.TempDir(), Max: 4}
	t0 := time.Unix(1700000000, 0)
	for i, k := range []Kind{CheckpointCommitted, CheckpointFailed, ColdStart, CheckpointStarted, SnapshotDeleted} {
		must(t, s.Write(Report{Time: t0.Add(time.Duration(i) * time.Second), Kind: k}))
	}
	entries, _, err := s.List()
	must(t, err)
	var kinds []string
	for _, e := range entries {
		kinds = append(kinds, string(e.Report.Kind))
	}
	// At the fifth write the spool held 4: one removed, the oldest event-only (ColdStart).
	if got, want := strings.Join(kinds, " "), "CheckpointCommitted CheckpointFailed CheckpointStarted SnapshotDeleted"; got != want {
		t.Fatalf("spool after trimming holds %s, want %s", got, want)
	}
	// Only stateful reports left: the oldest goes.
	s.Max = 2
	must(t, s.Write(Report{Time: t0.Add(time.Minute), Kind: Restored}))
	entries, _, _ = s.List()
	if len(entries) != 2 || entries[0].Report.Kind != SnapshotDeleted || entries[1].Report.Kind != Restored {
		t.Fatalf("after lowering Max: %+v", entries)
	}
}
