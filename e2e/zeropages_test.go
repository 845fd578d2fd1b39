package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
)

// zeroPagesScript fills 48 MiB of /dev/shm (tmpfs: application memory in gVisor; ctr's
// /dev/shm holds 64 MiB) with zeros, reads /proc/meminfo so that gVisor's usage scan
// marks those pages committed (off, gVisor saves committed pages without looking at
// them), checkpoints itself, then counts the file's non-zero bytes. Its $0 is the run's
// tag, so each run has its own snapshot key.
const zeroPagesScript = `dd if=/dev/zero of=/dev/shm/zero bs=1M count=48 2>/dev/null
cat /proc/meminfo >/dev/null; sleep 0.3; cat /proc/meminfo >/dev/null
echo ready
if (exec 3<>/proc/gvisor/checkpoint) 2>/dev/null; then exec 3<>/proc/gvisor/checkpoint; echo 1 >&3; read -r r <&3; exec 3>&-; else r=error; fi
echo "checkpoint result: $r"
echo "nonzero bytes: $(tr -d '\000' </dev/shm/zero | wc -c) of $(wc -c </dev/shm/zero)"
sleep 600
`

// TestExcludeZeroPages: with exclude_zero_pages the workload's checkpoint leaves its
// committed zero pages out (the sandbox carries gVisor's exclude-committed-zero-pages
// annotation), so the snapshot's raw size is smaller by about the zeroed 48 MiB than
// without it, and the snapshot restores with those pages zero.
func TestExcludeZeroPages(t *testing.T) {
	e := newEnv(t, localStore)
	base, err := os.ReadFile(e.config)
	must(t, err)
	onConfig := filepath.Join(e.dir, "shim-zero.toml")
	must(t, os.WriteFile(onConfig, append([]byte("exclude_zero_pages = true\n"), base...), 0o644))

	run := func(config, id, tag string) (raw int64) {
		t.Helper()
		log := e.startWith(config, id, myApp, "sh", "-c", zeroPagesScript, tag)
		out := harness.WaitForOutput(t, log, "nonzero bytes:", time.Minute)
		if !strings.Contains(out, "checkpoint result: resume") {
			t.Fatalf("%s: the workload's checkpoint did not save:\n%s", id, out)
		}
		data, err := os.ReadFile(filepath.Join(e.cd.State, "io.containerd.runtime.v2.task", "test", id, "config.json"))
		must(t, err)
		var spec struct{ Annotations map[string]string }
		must(t, json.Unmarshal(data, &spec))
		want := map[string]string{"zero-off": "false", "zero-on": "true"}[id]
		if got := spec.Annotations["dev.gvisor.internal.checkpoint.exclude-committed-zero-pages"]; got != want {
			t.Fatalf("%s: exclude-committed-zero-pages annotation %q, want %q", id, got, want)
		}
		m := e.committed(id)
		raw, stored := m.Sizes()
		t.Logf("%s: snapshot %s raw %d bytes, stored %d bytes", id, m.UUID, raw, stored)
		e.remove(id)
		return raw
	}
	off := run(e.config, "zero-off", "off")
	on := run(onConfig, "zero-on", "on")
	if off-on < 40<<20 {
		t.Fatalf("raw size %d bytes with exclude_zero_pages, %d without: want at least 40 MiB less", on, off)
	}

	// The snapshot without its zero pages restores, and the file still reads as zeros.
	log := e.startWith(onConfig, "zero-warm", myApp, "sh", "-c", zeroPagesScript, "on")
	out := printable(harness.WaitForOutput(t, log, "nonzero bytes:", time.Minute))
	if !strings.Contains(out, "checkpoint result: restore") || !strings.Contains(out, "nonzero bytes: 0 of 50331648") {
		t.Fatalf("restore of the snapshot without zero pages:\n%s", out)
	}
	e.remove("zero-warm")
}
