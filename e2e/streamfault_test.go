package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/storage"
)

// Faults of a streamed restore (issue 23): every fault seen before the pod resumes is a
// cold start; one after it ends the pod within seconds, naming the frame; bad bytes mark
// the snapshot Failed so the next pod starts cold.

// stream256 fills 256 MiB (64 frames) and triggers its checkpoint.
var stream256 = []string{"slowinit", "-mib", "256", "-seconds", "1", "-checkpoint"}

// snapshotOf runs stream256 as container id until its snapshot is committed, removes it,
// and returns the snapshot.
func (e *env) snapshotOf(id string) *manifest.Manifest {
	e.t.Helper()
	out := e.start(id, myApp, stream256...)
	harness.WaitForOutput(e.t, out, "checkpoint result: resume", 2*time.Minute)
	m := e.committedWithin(id, 2*time.Minute)
	e.remove(id)
	return m
}

// startRestored starts stream256 as container id, waits for its checkpoint result and
// fails the test unless it is `restore`; it returns the output file.
func (e *env) startRestored(id string) string {
	e.t.Helper()
	out := e.start(id, myApp, stream256...)
	harness.WaitForOutput(e.t, out, "checkpoint result: ", time.Minute)
	if got := readFile(out); !strings.Contains(got, "checkpoint result: restore") {
		e.t.Fatalf("%s did not resume from the snapshot (decision: %s):\n%s", id, e.decision(id), got)
	}
	return out
}

// runToMemoryOK starts stream256 as container id and waits until its memory is checked;
// it fails the test unless its checkpoint result was result (resume: it started cold;
// restore: it was restored).
func (e *env) runToMemoryOK(id, result string) {
	e.t.Helper()
	out := harness.WaitForOutput(e.t, e.start(id, myApp, stream256...), "memory ok", 2*time.Minute)
	if !strings.Contains(out, "checkpoint result: "+result) {
		e.t.Fatalf("%s: want checkpoint result %s (decision: %s):\n%s", id, result, e.decision(id), out)
	}
}

// truncate cuts the stored object name to size bytes: in place on a local store (the
// backing file of a gated one), as a shorter replacement in a bucket (objects there are
// immutable).
func (e *env) truncate(name string, size int64) {
	e.t.Helper()
	if e.gcs == nil {
		root := strings.TrimPrefix(e.store.URL(""), "file://")
		must(e.t, os.Truncate(filepath.Join(root, name), size))
		return
	}
	ctx := context.Background()
	rc, err := e.store.GetRange(ctx, name, 0, size)
	must(e.t, err)
	data, err := io.ReadAll(rc)
	rc.Close()
	must(e.t, err)
	_, err = e.store.Put(ctx, name, bytes.NewReader(data))
	must(e.t, err)
}

// heldFrames is how many frames in the middle of the pages a test holds back at the
// store: pages of the workload's buffer, which it touches only after it printed its
// checkpoint result (the first and last pages of the file hold the Go runtime's and the
// sentry's own, which the restored pod needs before it prints anything).
const heldFrames = 4

// holdMiddle holds back the shim's reads of heldFrames frames from the middle of the
// pages file pages at the env's gate, and returns the first of them, its stored offset
// and the release.
func (e *env) holdMiddle(pages storage.FileInfo, x *storage.FrameIndex) (first int, off int64, release func()) {
	first = x.Len() / 2
	off, size := x.Stored(first, heldFrames)
	if e.gate != nil {
		return first, off, e.gate.Hold(pages.Name, off, off+size)
	}
	return first, off, e.localGate.Hold(pages.Name, off, off+size)
}

// awaitFilledBut waits until the node cache's fill of the snapshot being streamed has
// every frame but n (the ones held back).
func (e *env) awaitFilledBut(total, n int) {
	e.t.Helper()
	harness.Eventually(e.t, time.Minute, fmt.Sprintf("%d of %d frames in the fill", total-n, total), func() bool {
		progs, _ := filepath.Glob(filepath.Join(e.workDir, "cache", ".fill-*", ".progress"))
		for _, p := range progs {
			b, err := os.ReadFile(p)
			if err == nil && len(b) == total && bytes.Count(b, []byte{1}) == total-n {
				return true
			}
		}
		return false
	})
}

// awaitState waits for snapshot m's manifest to be in state and returns it.
func (e *env) awaitState(m *manifest.Manifest, state manifest.State) *manifest.Manifest {
	e.t.Helper()
	var back *manifest.Manifest
	harness.Eventually(e.t, time.Minute, "snapshot "+string(state), func() bool {
		var err error
		back, err = e.repo.Get(context.Background(), m.Namespace, m.Policy, m.UUID)
		return err == nil && back.State == state
	})
	return back
}

var frameRE = regexp.MustCompile(`frame (\d+)`)

// namedFrame is the frame a line names, -1 for none.
func namedFrame(line string) int {
	m := frameRE.FindStringSubmatch(line)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestTruncatedSnapshotStartsCold: the pages object cut to half after the commit. The
// next pod sees it before it resumes (the object's size against the manifest's): it
// starts cold and runs, the snapshot is marked Failed, and the cold pod commits anew.
// Before: the pod "restored" at once and hung for 2 minutes on a frame that could never
// arrive, then failed, and so did every later pod of the spec.
func TestTruncatedSnapshotStartsCold(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newEnv(t, kind)
		m := e.snapshotOf("orig")
		pages, _ := framedPages(t, m)
		e.truncate(pages.Name, pages.StoredSize/2)

		t0 := time.Now()
		e.runToMemoryOK("again", "resume")
		d := e.decision("again")
		if !strings.Contains(d, "cold start") || !strings.Contains(d, "size mismatch") || !strings.Contains(d, pages.Name) {
			t.Fatalf("the cold start does not say the object is cut short: %s", d)
		}
		back := e.awaitState(m, manifest.StateFailed)
		if !strings.Contains(back.Reason, "size mismatch") {
			t.Fatalf("the Failed snapshot's reason: %q", back.Reason)
		}
		next := e.committedWithin("again", 2*time.Minute)
		if next.UUID == m.UUID {
			t.Fatal("no new snapshot committed")
		}
		t.Logf("cold start %.1f s after the pod was created: %s", time.Since(t0).Seconds(), d)
		e.remove("again")
	})
}

// TestTruncatedAfterResume: frames in the middle of the pages object held at the store
// until the restored pod has resumed and the rest has arrived, then the object cut at the
// first of them and the reads let go. The pod
// cannot start cold any more: it ends within 10 s, the shim's line naming a frame past the
// cut; the snapshot is Failed; the next pod starts cold and commits a new snapshot.
func TestTruncatedAfterResume(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newEnvWith(t, kind, envOptions{gate: true})
		m := e.snapshotOf("late-orig")
		pages, x := framedPages(t, m)
		cut, off, release := e.holdMiddle(pages, x)

		log2 := e.startRestored("late")
		// Every frame but the held ones has arrived: the object is cut at the first held
		// frame, and only those can no longer be had.
		e.awaitFilledBut(x.Len(), heldFrames)
		e.truncate(pages.Name, off)
		t0 := time.Now()
		release()
		harness.Eventually(t, 20*time.Second, "the restored pod ends", func() bool { return e.exitLine("late") != "" })
		took := time.Since(t0)
		if took > 10*time.Second {
			t.Errorf("the restored pod ended %v after its pages failed; want within 10 s", took)
		}
		if out := readFile(log2); strings.Contains(out, "memory ok") {
			t.Fatalf("the restored workload read memory it never got as intact:\n%s", out)
		}
		line := e.logLine("late", "restored pod stopped")
		if n := namedFrame(line); n < cut || !strings.Contains(line, pages.Name) || !strings.Contains(line, "marked Failed") {
			t.Fatalf("the shim's line does not name a frame from %d of %s: %s", cut, pages.Name, line)
		}
		back := e.awaitState(m, manifest.StateFailed)
		if n := namedFrame(back.Reason); n < cut {
			t.Fatalf("the Failed snapshot's reason names no frame from %d: %q", cut, back.Reason)
		}
		t.Logf("the restored pod ended %.1f s after the cut (%s): %s", took.Seconds(), e.exitLine("late"), line)
		e.remove("late")

		e.runToMemoryOK("third", "resume")
		if next := e.committedWithin("third", 2*time.Minute); next.UUID == m.UUID {
			t.Fatal("no new snapshot committed")
		}
		e.remove("third")
	})
}

// TestStoreStallsMidStream: the store holds the reads of frames in the middle of the pages
// open without a byte (a proxy in front of fake-gcs-server) while the pod resumes. The
// pod ends within the stall deadline (twice 10 s: one more try) plus the grace the shim
// gives gVisor, its line naming the frame and the stall; the snapshot stays Committed (its
// bytes were never seen bad). While the store still stalls, the next pod on the node
// starts cold instead (the node remembers the stall and probes the frame first); with the
// store back, the next pod restores.
func TestStoreStallsMidStream(t *testing.T) {
	e := newEnvWith(t, gcsStore, envOptions{gate: true})
	m := e.snapshotOf("stall-orig")
	pages, x := framedPages(t, m)
	from, _, release := e.holdMiddle(pages, x)
	t0 := time.Now()
	e.startRestored("stalled")
	harness.Eventually(t, time.Minute, "the stalled pod ends", func() bool { return e.exitLine("stalled") != "" })
	took := time.Since(t0)
	if took > 30*time.Second {
		t.Errorf("the pod ended %v after it was created; want within 2 x 10 s of stall and 3 s of grace", took)
	}
	line := e.logLine("stalled", "restored pod stopped")
	if n := namedFrame(line); n < from || !strings.Contains(line, "stopped answering") || !strings.Contains(line, "snapshot is kept") {
		t.Fatalf("the shim's line does not name the stalled frame (from %d): %s", from, line)
	}
	if back, err := e.repo.Get(context.Background(), m.Namespace, m.Policy, m.UUID); err != nil || back.State != manifest.StateCommitted {
		t.Fatalf("the snapshot after a stall: %v, %v; want it Committed", back, err)
	}
	t.Logf("the stalled pod ended %.1f s after it was created: %s", took.Seconds(), line)
	e.remove("stalled")

	// The store still stalls: the next pod on this node is not restored into the same
	// stall; it starts cold, saying why.
	e.start("still", myApp, stream256...)
	if d := e.decision("still"); !strings.Contains(d, "cold start") || !strings.Contains(d, "still does not deliver frame") {
		t.Fatalf("the pod after the stall, the store still stalling: %s", d)
	}
	e.remove("still")

	release()
	e.runToMemoryOK("after", "restore")
	e.remove("after")
}

// TestShimKilledDuringStreamedRestore: the shim SIGKILLed while its pod's pages still
// stream (frames held at the store). Its work dir (the FUSE mount the pod was
// restored from) is left with its lock free, and containerd's cleanup of the dead shim
// (`shim delete`) removes it: nothing mounted under the work dir after.
func TestShimKilledDuringStreamedRestore(t *testing.T) {
	e := newEnvWith(t, gcsStore, envOptions{gate: true})
	m := e.snapshotOf("kill-orig")
	pages, x := framedPages(t, m)
	_, _, release := e.holdMiddle(pages, x)
	defer release()

	e.startRestored("killed")
	dir := filepath.Join(e.workDir, e.cd.Namespace, "killed")
	if mounts := mountsBelow(t, dir); len(mounts) == 0 {
		t.Fatalf("no FUSE mount under %s while the pod streams", dir)
	}
	procs, err := harness.FindProcesses([]string{e.cd.Dir})
	must(t, err)
	shim := -1
	for _, p := range procs {
		if filepath.Base(p.Cmdline[0]) == "containerd-shim-podsnapshot-v1" && slices.Contains(p.Cmdline, "killed") {
			shim = p.PID
		}
	}
	if shim < 0 {
		t.Fatalf("no shim serving killed among %v", procs)
	}
	must(t, syscall.Kill(shim, syscall.SIGKILL))
	harness.Eventually(t, time.Minute, "the dead shim's work dir removed", func() bool {
		_, err := os.Stat(dir)
		return os.IsNotExist(err)
	})
	if mounts := mountsBelow(t, e.workDir); len(mounts) > 0 {
		t.Fatalf("still mounted under the work dir: %v", mounts)
	}
	var by string
	for _, l := range strings.Split(e.cd.Logs(), "\n") {
		if strings.Contains(l, "the work dir of a pod whose shim died") {
			by = l
		}
	}
	t.Logf("removed: %s", by)
	e.cd.Ctr(t, "task", "rm", "-f", "killed")
	e.cd.Ctr(t, "container", "rm", "killed")
}

// mountsBelow lists the mount points at or below dir.
func mountsBelow(t *testing.T, dir string) []string {
	t.Helper()
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	must(t, err)
	var out []string
	for _, m := range ms {
		out = append(out, m.Mountpoint)
	}
	return out
}
