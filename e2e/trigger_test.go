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
