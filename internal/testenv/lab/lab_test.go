package lab

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A committed line as containerd's log carries it from the shim.
const committedLine = `time="2026-11-30T16:23:36.833533066Z" level=info msg="podsnapshot: committed: Successfully checkpointed the pod to PodSnapshot demo/982bd5f6-eb1e-4ba3-8b74-5ae973bc4b34" id=slowinit-cold raw_bytes=67904214 reason=GKEPodSnapshotting runtime=io.containerd.podsnapshot.v1 snapshot=982bd5f6-eb1e-4ba3-8b74-5ae973bc4b34 stored_bytes=67205428 upload_ms=1821`

func TestParseLogEntry(t *testing.T) {
	e := ParseLogEntry(committedLine)
	if want := time.Date(2026, 11, 30, 16, 23, 36, 833533066, time.UTC); !e.Time.Equal(want) {
		t.Errorf("time %v, want %v", e.Time, want)
	}
	if e.Level != "info" || !strings.HasPrefix(e.Msg, "podsnapshot: committed: Successfully") {
		t.Errorf("level %q msg %q", e.Level, e.Msg)
	}
	if e.Fields["id"] != "slowinit-cold" || e.Fields["snapshot"] != "982bd5f6-eb1e-4ba3-8b74-5ae973bc4b34" {
		t.Errorf("fields %v", e.Fields)
	}
	if e.Int("raw_bytes") != 67904214 || e.Int("stored_bytes") != 67205428 || e.Int("upload_ms") != 1821 {
		t.Errorf("numbers %v", e.Fields)
	}
	if e.Int("missing") != -1 {
		t.Errorf("a missing field is %d, want -1", e.Int("missing"))
	}

	// Escaped quotes inside a value, and a bare value at the end.
	e = ParseLogEntry(`time="x" msg="say \"hi\" now" error="a b" n=3`)
	if e.Msg != `say "hi" now` || e.Fields["error"] != "a b" || e.Int("n") != 3 || !e.Time.IsZero() {
		t.Errorf("parsed %+v", e)
	}
	// Not a logrus line: nothing.
	if e := ParseLogEntry("count 3"); len(e.Fields) != 0 {
		t.Errorf("plain text parsed as %v", e.Fields)
	}
}

func TestTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.log")
	tail := Follow(path) // before the file exists, as for a task not yet started
	defer tail.Close()
	ctx := context.Background()

	if _, err := tail.WaitContains(ctx, 50*time.Millisecond, "ready"); err == nil {
		t.Fatal("found a line in a file that does not exist")
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString("slowinit: filling\nready 2026")
	// An unterminated line is not a line yet.
	time.Sleep(30 * time.Millisecond)
	if got := tail.Text(); got != "slowinit: filling\n" {
		t.Fatalf("text %q", got)
	}
	before := time.Now()
	f.WriteString("-11-30\ncount 0\n")
	l, err := tail.Wait(ctx, time.Second, "ready", func(s string) bool { return strings.HasPrefix(s, "ready ") })
	if err != nil {
		t.Fatal(err)
	}
	if l.Text != "ready 2026-11-30" || l.Seen.Before(before) {
		t.Fatalf("line %+v (written after %v)", l, before)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := tail.WaitContains(cctx, time.Minute, "never"); err == nil || !strings.Contains(err.Error(), "canceled") {
		t.Fatalf("wait with a cancelled context: %v", err)
	}
}
