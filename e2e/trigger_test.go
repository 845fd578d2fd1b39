package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
)

// TestImmediateTriggerIsCommitted: a workload that triggers its checkpoint the moment it
// starts (no memory to fill, no wait) reads "resume", and that snapshot is committed,
// every time. The checkpoint watcher must be registered with gVisor before the workload
// can run: `runsc wait --checkpoint` waits for the checkpoint after the current one, so a
// watcher that came late would miss a save finished before it and upload nothing.
func TestImmediateTriggerIsCommitted(t *testing.T) {
	e := newEnv(t, localStore)
	const runs = 6
	for i := range runs {
		id := fmt.Sprintf("quick%d", i)
		// Each run its own key (another -mib value), so each one starts cold.
		log := e.start(id, myApp, "slowinit", "-mib", fmt.Sprint(i), "-seconds", "0", "-checkpoint")
		out := harness.WaitForOutput(t, log, "checkpoint result: ", time.Minute)
		if !strings.Contains(out, "checkpoint result: resume") {
			t.Fatalf("run %d: the workload's checkpoint did not save:\n%s", i, out)
		}
		m := e.committed(id) // fails the test after 60 s without a commit
		if m.Source.SandboxID != id {
			t.Fatalf("run %d: committed snapshot of %s", i, m.Source.SandboxID)
		}
		e.remove(id)
	}
}

// TestSecondTriggerIsRefused: runsc saves a sandbox once (it opened the image files at
// create). After the first checkpoint is committed, a second write of 1 fails and the
// workload reads no "resume"; nothing more is uploaded and the shim logs no failed
// checkpoint for it.
func TestSecondTriggerIsRefused(t *testing.T) {
	e := newEnv(t, localStore)
	log := e.start("twice", myApp, "slowinit", "-mib", "1", "-seconds", "0", "-checkpoint")
	harness.WaitForOutput(t, log, "checkpoint result: resume", time.Minute)
	first := e.committed("twice")
	trigger := `exec 3<>/proc/gvisor/checkpoint || { echo open-failed; exit 0; }
echo 1 >&3 || { echo write-failed; exit 0; }
read -r r <&3; echo "result: $r"`
	r := e.cd.Ctr(t, "task", "exec", "--exec-id", "again", "twice", "sh", "-c", trigger)
	out := strings.TrimSpace(r.Stdout)
	t.Logf("second trigger: %q (exit %d)", out, r.ExitCode)
	if strings.Contains(out, "resume") {
		t.Fatalf("a second checkpoint of the sandbox saved: %q", out)
	}
	time.Sleep(2 * time.Second)
	if n := len(e.snapshots()); n != 1 {
		t.Fatalf("%d snapshots after a refused second trigger, want only %s", n, first.UUID)
	}
	if line := e.logLine("twice", "checkpoint failed"); line != "" {
		t.Fatalf("the shim logged a failed checkpoint for the refused trigger: %s", line)
	}
	e.remove("twice")
}
