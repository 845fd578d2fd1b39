package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/e2e/harness"
)

// fsinit writes 256 MiB of files into its root file system, deletes, modifies and
// replaces files of its image, then triggers the workload checkpoint; a start that finds
// those files (from a rootfs-only snapshot) checks each of them instead.
var fsinit = []string{"fsinit", "-mib", "256", "-seconds", "2", "-checkpoint", "-interval", "200ms"}

// TestRootfsOnly (issue 17, must-shows 1 and 2): under a rootfs-only policy the
// workload's trigger stores its root file system layer and no memory; a pod of the same
// spec starts fresh (its counter from 0, no restore reported by /proc/gvisor/checkpoint)
// and finds every file written, deleted and modified by the first.
func TestRootfsOnly(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newEnv(t, kind)
		rootfsApp := []string{"app=rootfs"}
		log1 := e.start("fs1", rootfsApp, fsinit...)
		out1 := harness.WaitForOutput(t, log1, "checkpoint result: ", 2*time.Minute)
		if !strings.Contains(out1, "setup done") || !strings.Contains(out1, "checkpoint result: resume") {
			t.Fatalf("first pod's output:\n%s", out1)
		}
		m := e.committedWithin("fs1", 2*time.Minute)
		layers := m.RootfsLayers()
		raw, stored := m.Sizes()
		if m.Scope != manifest.ScopeRootfsOnly || len(m.Files) != 1 || len(layers) != 1 || layers["main"].Name == "" {
			t.Fatalf("snapshot %s: scope %q, files %v; want one root file system layer and no memory image", m.UUID, m.Scope, m.Files)
		}
		if raw < 256<<20 {
			t.Fatalf("the layer holds %d bytes, less than the 256 MiB written", raw)
		}
		t.Logf("snapshot %s: layer of %d bytes, %d stored", m.UUID, raw, stored)
		// The first pod runs on after its snapshot (postCheckpoint: resume).
		harness.WaitForOutput(t, log1, "count 3", time.Minute)
		e.remove("fs1")

		log2 := e.start("fs2", rootfsApp, fsinit...)
		out2 := harness.WaitForOutput(t, log2, "count 0", 2*time.Minute)
		for _, want := range []string{"files ok", "deleted ok", "modified ok", "dir ok", "setup skipped", "checkpoint result: unavailable"} {
			if !strings.Contains(out2, want) {
				t.Fatalf("second pod's output lacks %q:\n%s", want, out2)
			}
		}
		if strings.Contains(out2, "setup done") || strings.Contains(out2, "checkpoint result: restore") {
			t.Fatalf("the second pod did not start fresh on the first one's files:\n%s", out2)
		}
		line := e.logLine("fs2", "decision=restored")
		if !strings.Contains(line, "scope=rootfs-only") || !strings.Contains(line, m.UUID) {
			t.Fatalf("the restore's decision line %q does not name the snapshot and its scope", line)
		}
		if out, code := e.cli("ls", "-n", "test", "-o", "wide"); code != 0 || !strings.Contains(out, "rootfs-only") {
			t.Fatalf("podsnapshot ls: exit %d, no scope shown:\n%s", code, out)
		}
		e.remove("fs2")
	})
}

// TestRootfsOnlyManualStop: the manual trigger (`podsnapshot checkpoint`) of a
// rootfs-only pod under postCheckpoint: stop saves its layer, then the pod ends with
// status 0; the next pod starts on the files.
func TestRootfsOnlyManualStop(t *testing.T) {
	e := newEnv(t, localStore)
	app := []string{"app=rootfs-manual"}
	cmd := []string{"fsinit", "-mib", "16", "-seconds", "1", "-interval", "200ms"}
	log1 := e.start("fsm1", app, cmd...)
	harness.WaitForOutput(t, log1, "count 2", time.Minute)
	out, code := e.cli("checkpoint", "--address", e.cd.Address, "--namespace", e.cd.Namespace, "fsm1")
	if code != 0 || !strings.Contains(out, "committed") {
		t.Fatalf("podsnapshot checkpoint: exit %d\n%s", code, out)
	}
	harness.Eventually(t, 30*time.Second, "the stopped pod exits", func() bool { return e.exitLine("fsm1") != "" })
	if line := e.exitLine("fsm1"); !strings.Contains(line, "status=0") {
		t.Fatalf("exit after a committed stop snapshot: %s", line)
	}
	ms := e.snapshots()
	if len(ms) != 1 || !ms[0].RootfsOnly() {
		t.Fatalf("store holds %v", ms)
	}
	e.remove("fsm1")
	log2 := e.start("fsm2", app, cmd...)
	out2 := harness.WaitForOutput(t, log2, "count 0", time.Minute)
	if !strings.Contains(out2, "files ok") || !strings.Contains(out2, "modified ok") {
		t.Fatalf("second pod's output:\n%s", out2)
	}
	e.remove("fsm2")
}

// Containers a and b of a CRI pod each write /mine in their root file system (b first,
// then a, which triggers the checkpoint); the emptyDir /data only orders them.
const (
	rootfsAScript = `if [ -f /mine ]; then echo "found $(cat /mine)"; else
while [ ! -f /data/b-ready ]; do sleep 0.1; done
echo "a wrote this" > /mine
if (exec 3<>/proc/gvisor/checkpoint) 2>/dev/null; then exec 3<>/proc/gvisor/checkpoint; echo 1 >&3; read -r r <&3; exec 3>&-; else r=error; fi
echo "checkpoint result: ${r:-error}"
fi
while :; do sleep 1; done`
	rootfsBScript = `if [ -f /mine ]; then echo "found $(cat /mine)"; else
echo "b wrote this" > /mine
touch /data/b-ready
echo "b ready"
fi
while :; do sleep 1; done`
)

// TestRootfsOnlyPodOfTwo (issue 17, must-show 3): each container's root file system
// comes back into the container of the same name, in a CRI pod of two.
func TestRootfsOnlyPodOfTwo(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newCRIEnv(t, kind)
		p := e.startPod("fs-pod", "rootfs")
		p.add("a", rootfsAScript)
		p.add("b", rootfsBScript)
		harness.WaitForOutput(t, p.log("a"), "checkpoint result: resume", 2*time.Minute)
		m := e.committedWithin(p.id, time.Minute)
		layers := m.RootfsLayers()
		if len(layers) != 2 || layers["a"].Name == "" || layers["b"].Name == "" || len(m.Files) != 2 {
			t.Fatalf("snapshot %s: files %v; want the layers of a and b only", m.UUID, m.Files)
		}
		p.remove()

		p2 := e.startPod("fs-pod", "rootfs")
		p2.add("a", rootfsAScript)
		p2.add("b", rootfsBScript)
		outA := harness.WaitForOutput(t, p2.log("a"), "found ", time.Minute)
		outB := harness.WaitForOutput(t, p2.log("b"), "found ", time.Minute)
		if !strings.Contains(outA, "found a wrote this") || !strings.Contains(outB, "found b wrote this") {
			t.Fatalf("the layers came back into the wrong containers:\na: %s\nb: %s", outA, outB)
		}
		if strings.Contains(outA, "checkpoint result") {
			t.Fatalf("a started from scratch:\n%s", outA)
		}
		for _, c := range []string{"a", "b"} {
			found := false
			for _, line := range strings.Split(e.cd.Logs(), "\n") {
				if strings.Contains(line, "decision=restored") && strings.Contains(line, "root file system of container "+c+" ") {
					found = true
				}
			}
			if !found {
				t.Fatalf("no restore line for container %s", c)
			}
		}
	})
}
