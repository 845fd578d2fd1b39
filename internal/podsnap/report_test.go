package podsnap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/internal/report"
)

// reports returns the reports in the env's spool about sandbox id, in written order.
func (e *env) reports(id string) []report.Report {
	e.t.Helper()
	entries, bad, err := report.Spool{Dir: e.cfg.Reports()}.List()
	must(e.t, err)
	if len(bad) > 0 {
		e.t.Fatalf("unreadable reports: %v", bad)
	}
	var out []report.Report
	for _, en := range entries {
		if en.Report.SandboxID == id {
			out = append(out, en.Report)
		}
	}
	return out
}

// kinds lists the kinds of rs, for messages and comparisons.
func kinds(rs []report.Report) string {
	var ks []string
	for _, r := range rs {
		ks = append(ks, string(r.Kind))
	}
	return strings.Join(ks, ", ")
}

// waitReports waits until sandbox id has n reports and returns them.
func (e *env) waitReports(id string, n int) []report.Report {
	e.t.Helper()
	var rs []report.Report
	eventually(e.t, fmt.Sprintf("%d reports about %s", n, id), func() bool {
		rs = e.reports(id)
		return len(rs) >= n
	})
	if len(rs) != n {
		e.t.Fatalf("reports about %s: %s; want %d", id, kinds(rs), n)
	}
	return rs
}

// A cold start under a workload policy reserves the UUID its checkpoint is committed
// under; the checkpoint's reports name it, with where it is stored and its sizes.
func TestReportsColdStartThenCheckpoint(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	m := checkpointWorkload(t, e, "sb1")
	rs := e.waitReports("sb1", 3)
	if kinds(rs) != "ColdStart, CheckpointStarted, CheckpointCommitted" {
		t.Fatalf("reports: %s", kinds(rs))
	}
	cold, started, committed := rs[0], rs[1], rs[2]
	wantPod := report.Pod{Namespace: "default", Name: "pod-sb1", UID: "uid-pod-sb1"}
	for _, r := range rs {
		if r.Pod != wantPod || r.SandboxID != "sb1" || r.Policy != "my-app" || r.Time.IsZero() {
			t.Fatalf("%s report identifies %+v / %s / %s", r.Kind, r.Pod, r.SandboxID, r.Policy)
		}
	}
	if cold.Reason != report.ReasonNoSnapshot || !strings.HasPrefix(cold.Message, "no snapshot for key") ||
		!strings.Contains(cold.Message, "workload trigger") || !manifest.IsUUID(cold.Snapshot) {
		t.Fatalf("cold start report %+v", cold)
	}
	if started.Snapshot != cold.Snapshot || committed.Snapshot != cold.Snapshot || m.UUID != cold.Snapshot {
		t.Fatalf("reserved %s; checkpoint started %s, committed %s, stored %s: want one UUID",
			cold.Snapshot, started.Snapshot, committed.Snapshot, m.UUID)
	}
	_, stored := m.Sizes()
	if want := "file://" + e.store + "/default/my-app/" + m.UUID; committed.StoragePath != want {
		t.Fatalf("storage path %q, want %q", committed.StoragePath, want)
	}
	if committed.StoredBytes != stored || committed.UploadSeconds <= 0 || committed.Seconds < committed.UploadSeconds ||
		!strings.Contains(committed.Message, "default/"+m.UUID) {
		t.Fatalf("committed report %+v (stored %d bytes)", committed, stored)
	}
	// A pod that was to restore but is deleted before its Start reports nothing.
	p := e.node.Plan(context.Background(), Sandbox{Task: newFakeTask("x"), Spec: sandboxSpec("x"), Config: e.cfg})
	p.Delete(context.Background(), p.sb)
	if rs := e.reports("x"); len(rs) != 0 {
		t.Fatalf("a restoring pod deleted before Start: %s", kinds(rs))
	}
}

// A restore names its snapshot, where it is stored and how long it took; the restore
// after it from the node cache says so.
func TestReportsRestoreAndCacheHit(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	m := checkpointWorkload(t, e, "sb1")
	path := "file://" + e.store + "/default/my-app/" + m.UUID
	for i, id := range []string{"sb2", "sb3"} {
		p, sb := e.plan(id, "pod-"+id)
		must(t, p.Start(context.Background(), sb))
		p.Delete(context.Background(), sb)
		rs := e.reports(id)
		if len(rs) != 1 {
			t.Fatalf("reports about %s: %s; want Restored only", id, kinds(rs))
		}
		r := rs[0]
		cacheHit := i == 1
		if r.Kind != report.Restored || r.Snapshot != m.UUID || r.StoragePath != path || r.Seconds <= 0 ||
			r.CacheHit != cacheHit || (r.DownloadSeconds > 0) == cacheHit || r.Pod.Name != "pod-"+id ||
			!strings.HasPrefix(r.Message, "Successfully restored the pod from PodSnapshot default/"+m.UUID) {
			t.Fatalf("restore %d: %+v", i+1, r)
		}
	}
}

// Each checkpoint of a pod has its own UUID; a failed one is reported with its error.
func TestReportsFailedCheckpoints(t *testing.T) {
	t.Run("manual", func(t *testing.T) {
		e := newEnv(t, "manual", "resume")
		p, sb := e.plan("sb1", "pod")
		must(t, p.Start(context.Background(), sb))
		sb.fail["checkpoint"] = errors.New("runsc checkpoint: no\nexit status 128")
		if _, err := p.Checkpoint(context.Background()); err == nil {
			t.Fatal("a failed runsc checkpoint committed")
		}
		delete(sb.fail, "checkpoint")
		m, err := p.Checkpoint(context.Background())
		must(t, err)
		p.Delete(context.Background(), sb)
		rs := e.reports("sb1")
		if kinds(rs) != "ColdStart, CheckpointStarted, CheckpointFailed, CheckpointStarted, CheckpointCommitted" {
			t.Fatalf("reports: %s", kinds(rs))
		}
		if rs[0].Snapshot != "" || rs[0].Reason != report.ReasonNoSnapshot {
			t.Fatalf("a manual policy's cold start reserved %q (reason %s)", rs[0].Snapshot, rs[0].Reason)
		}
		failed := rs[2]
		if !manifest.IsUUID(rs[1].Snapshot) || failed.Snapshot != rs[1].Snapshot || failed.Message != "runsc checkpoint: no; exit status 128" {
			t.Fatalf("failed checkpoint: started %+v, failed %+v", rs[1], failed)
		}
		if rs[3].Snapshot == failed.Snapshot || rs[4].Snapshot != rs[3].Snapshot || m.UUID != rs[3].Snapshot {
			t.Fatalf("second checkpoint %s, committed %s (stored %s); the failed one was %s",
				rs[3].Snapshot, rs[4].Snapshot, m.UUID, failed.Snapshot)
		}
	})
	t.Run("workload", func(t *testing.T) {
		e := newEnv(t, "workload", "resume")
		p, sb := e.plan("sb1", "pod")
		must(t, p.Start(context.Background(), sb))
		sb.checkpoints <- errors.New("save failed") // the workload reads "error"
		sb.checkpoints <- nil                       // and tries again
		rs := e.waitReports("sb1", 4)
		if kinds(rs) != "ColdStart, CheckpointFailed, CheckpointStarted, CheckpointCommitted" {
			t.Fatalf("reports: %s", kinds(rs))
		}
		if rs[1].Snapshot != rs[0].Snapshot || !strings.Contains(rs[1].Message, "save failed") {
			t.Fatalf("failed save %+v; reserved %s", rs[1], rs[0].Snapshot)
		}
		if rs[2].Snapshot == rs[0].Snapshot || rs[3].Snapshot != rs[2].Snapshot || e.committed()[0].UUID != rs[2].Snapshot {
			t.Fatalf("retry committed as %s (started %s); the failed save was %s", rs[3].Snapshot, rs[2].Snapshot, rs[0].Snapshot)
		}
		sb.Exit(0)
		p.SandboxExited(0)
		p.Delete(context.Background(), sb)
		if rs := e.reports("sb1"); len(rs) != 4 {
			t.Fatalf("after Delete: %s", kinds(rs))
		}
	})
	t.Run("never triggered", func(t *testing.T) {
		e := newEnv(t, "workload", "resume")
		p, sb := e.plan("sb1", "pod")
		must(t, p.Start(context.Background(), sb))
		p.Delete(context.Background(), sb)
		rs := e.reports("sb1")
		if kinds(rs) != "ColdStart, CheckpointFailed" || rs[1].Snapshot != rs[0].Snapshot || !strings.Contains(rs[1].Message, "deleted") {
			t.Fatalf("reports: %+v", rs)
		}
	})
	t.Run("abandoned", func(t *testing.T) {
		e := newEnv(t, "manual", "stop")
		p, sb := e.plan("sb1", "pod")
		must(t, p.Start(context.Background(), sb))
		p.Kill(context.Background(), sb, 9, true)
		if _, err := p.Checkpoint(context.Background()); !errors.Is(err, errAbandoned) {
			t.Fatalf("checkpoint after kill: %v", err)
		}
		rs := e.reports("sb1")
		if kinds(rs) != "ColdStart, CheckpointStarted, CheckpointFailed" || rs[2].Message != errAbandoned.Error() {
			t.Fatalf("reports: %+v", rs)
		}
	})
}

// Each way a matched pod starts cold has its reason.
func TestReportsColdStartReasons(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	m := checkpointWorkload(t, e, "sb1")

	// A restore that runsc fails: the pod starts cold with a UUID for its checkpoint.
	p, sb := e.plan("failed", "pod-failed")
	sb.fail["restore"] = errors.New("runsc restore: boom")
	must(t, p.Start(context.Background(), sb))
	if rs := e.reports("failed"); kinds(rs) != "ColdStart" || rs[0].Reason != report.ReasonRestoreFailed ||
		!strings.Contains(rs[0].Message, "runsc restore: boom") || !manifest.IsUUID(rs[0].Snapshot) || rs[0].Snapshot == m.UUID {
		t.Fatalf("failed restore: %+v", rs)
	}

	// Another runsc: the snapshot is incompatible.
	tuple := e.tuple
	e.tuple = compat.New("runsc-other", map[string]string{"platform": "systrap"}, "amd64", []string{"sse"}, nil)
	e.plan("other", "pod-other")
	if rs := e.reports("other"); kinds(rs) != "ColdStart" || rs[0].Reason != report.ReasonIncompatible {
		t.Fatalf("incompatible: %+v", rs)
	}
	e.tuple = tuple

	// Corrupt data: found, downloaded, refused.
	obj := filepath.Join(e.store, m.Files[len(m.Files)-1].Name)
	data, err := os.ReadFile(obj)
	must(t, err)
	data[len(data)/2] ^= 0xff
	must(t, os.WriteFile(obj, data, 0o600))
	must(t, os.RemoveAll(e.cfg.Cache())) // the cached copy is good
	p, sb = e.plan("corrupt", "pod-corrupt")
	must(t, p.Start(context.Background(), sb))
	// The snapshot found corrupt is reported (the agent marks its PodSnapshot Failed),
	// then the cold start.
	if rs := e.reports("corrupt"); kinds(rs) != "SnapshotFailed, ColdStart" || rs[0].Snapshot != m.UUID ||
		!strings.Contains(rs[0].Message, "corrupt") || rs[1].Reason != report.ReasonCorrupt ||
		!strings.Contains(rs[1].Message, "corrupt") || !manifest.IsUUID(rs[1].Snapshot) || rs[1].Snapshot == m.UUID {
		t.Fatalf("corrupt: %+v", rs)
	}

	// The store is gone.
	must(t, os.RemoveAll(e.store))
	must(t, os.WriteFile(e.store, nil, 0o600)) // listing it fails
	e.plan("down", "pod-down")
	if rs := e.reports("down"); kinds(rs) != "ColdStart" || rs[0].Reason != report.ReasonStorageUnreachable {
		t.Fatalf("store unreachable: %+v", rs)
	}
}

// A pod of several containers whose container differs from the snapshot's starts cold
// with reason SpecDiffers.
func TestReportsSpecDiffers(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	snapshotOfTwo(t, e)
	pd := createPod(t, e, "second")
	pd.join("writer", "/bin/writer")
	pd.join("server", "/bin/other")
	rs := e.reports("second")
	if kinds(rs) != "ColdStart" || rs[0].Reason != report.ReasonSpecDiffers ||
		!strings.Contains(rs[0].Message, "container server differs") || !manifest.IsUUID(rs[0].Snapshot) {
		t.Fatalf("reports: %+v", rs)
	}
}

// A container run without Kubernetes (ctr: no CRI annotations) gets no reports, and a
// spool that cannot be written changes nothing for a pod.
func TestNoReports(t *testing.T) {
	e := newEnv(t, "workload", "resume")
	e.node.Namespace = "default" // ctr's namespace is the policy namespace
	sb := newFakeTask("ctr1")
	spec := &specs.Spec{Process: &specs.Process{Args: []string{"/app"}, Cwd: "/"}, Root: &specs.Root{Path: "rootfs"}}
	p := e.node.Plan(context.Background(), Sandbox{Task: sb, Spec: spec, Config: e.cfg})
	if p == nil {
		t.Fatal("the ctr container matched no policy")
	}
	must(t, p.Start(context.Background(), sb))
	sb.checkpoints <- nil
	eventually(t, "the commit", func() bool { return len(e.committed()) == 1 })
	p.Delete(context.Background(), sb)
	if entries, _, err := (report.Spool{Dir: e.cfg.Reports()}).List(); err != nil || len(entries) != 0 {
		t.Fatalf("a ctr container got reports: %+v, %v", entries, err)
	}

	// The spool's directory cannot be made: the pod starts and checkpoints all the same.
	file := filepath.Join(t.TempDir(), "file")
	must(t, os.WriteFile(file, nil, 0o600))
	e.cfg.ReportDir = filepath.Join(file, "reports")
	p2, sb2 := e.plan("sb2", "pod-sb2")
	must(t, p2.Start(context.Background(), sb2))
	if sb2.callLog() != "writespec, watch, start" {
		t.Fatalf("calls = %q with an unwritable spool, want a cold start with the trigger", sb2.callLog())
	}
	sb2.checkpoints <- nil
	eventually(t, "the commit", func() bool { return len(e.committed()) == 2 })
	p2.Delete(context.Background(), sb2)
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("x: %w", errors.New("connection refused")), report.ReasonStorageUnreachable},
		{fmt.Errorf("x: %w", context.Canceled), report.ReasonOther},
		{nil, report.ReasonOther},
		{fmt.Errorf("snapshot ns/u is corrupt: %w", manifest.ErrMisplaced), report.ReasonCorrupt},
	} {
		if got := fetchReason(tc.err); got != tc.want {
			t.Errorf("fetchReason(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
	for why, want := range map[string]string{
		"no snapshot for key ab12":                                      report.ReasonNoSnapshot,
		"no snapshot named U in file:///s for policy ns/p (annotation)": report.ReasonNoSnapshot,
		`snapshot name "x" is not a UUID (annotation)`:                  report.ReasonNoSnapshot,
		"incompatible snapshot ns/U: runsc version differs":             report.ReasonIncompatible,
		"snapshot ns/U was taken from another pod spec":                 report.ReasonSpecDiffers,
		"snapshot ns/U is Failed":                                       report.ReasonOther,
	} {
		if got := findReason(why); got != want {
			t.Errorf("findReason(%q) = %s, want %s", why, got, want)
		}
	}
	if got := oneLine(" a\n\n b \n"); got != "a; b" {
		t.Errorf("oneLine = %q", got)
	}
}
