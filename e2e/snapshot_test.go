package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/e2e/harness"
)

// slowinit is the workload of the snapshot tests: 32 MiB filled over 2 s, then it
// triggers its own checkpoint and keeps counting.
var slowinit = []string{"slowinit", "-mib", "32", "-seconds", "2", "-checkpoint"}

var myApp = []string{"app=my-app"}

// checkpointAndRestore runs slowinit until its snapshot is committed, removes it, and
// runs the same spec again; it returns the snapshot and the second run's output file.
func checkpointAndRestore(t *testing.T, e *env, first, second string) (*manifest.Manifest, string) {
	t.Helper()
	log1 := e.start(first, myApp, slowinit...)
	out := harness.WaitForOutput(t, log1, "checkpoint result: resume", time.Minute)
	if !strings.Contains(out, "ready") {
		t.Fatalf("cold start output:\n%s", out)
	}
	m := e.committed(first)
	e.remove(first)
	log2 := e.start(second, myApp, slowinit...)
	return m, log2
}

func TestSnapshotAndRestore(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newEnv(t, kind)
		m, log2 := checkpointAndRestore(t, e, "cold", "warm")
		out := harness.WaitForOutput(t, log2, "count 2", time.Minute)
		// The restored workload continues where it was saved: its pending read of
		// /proc/gvisor/checkpoint returns "restore", its memory is intact, and it did
		// not initialise again.
		if !strings.Contains(out, "checkpoint result: restore") || !strings.Contains(out, "memory ok") {
			t.Fatalf("restored output:\n%s", out)
		}
		if strings.Contains(out, "ready ") || strings.Contains(out, "filling") {
			t.Fatalf("the restored pod initialised again:\n%s", out)
		}
		if d := e.decision("warm"); !strings.Contains(d, "decision=restore") || !strings.Contains(d, m.UUID) {
			t.Fatalf("decision for the second run: %s", d)
		}
		// The first restore streamed from Cloud Storage: runsc restored while pages.img
		// arrived. The local store's object, just written and so in memory, was verified
		// whole and kept in the node cache instead: it restores as a cached one.
		want := "pages.img streams from"
		if kind == localStore {
			want = "the local store's files, in memory, verified whole"
		}
		if e.logLine("warm", want) == "" {
			t.Fatalf("the first restore's decision does not say %q: %s", want, e.decision("warm"))
		}
		if line := e.logLine("warm", "Successfully restored the pod from PodSnapshot test/"+m.UUID); line == "" {
			t.Fatal("no 'Successfully restored' line in the shim log")
		}
		// Exec, exit code and Kill work on a restored task as on any other.
		r := e.cd.Ctr(t, "task", "exec", "--exec-id", "x", "warm", "sh", "-c", "exit 4")
		if r.ExitCode != 4 {
			t.Fatalf("exec in the restored task: %s", r)
		}
		e.remove("warm")

		// A second restore of the same snapshot comes from the node cache.
		log3 := e.start("warm2", myApp, slowinit...)
		out3 := harness.WaitForOutput(t, log3, "memory ok", time.Minute)
		if !strings.Contains(out3, "checkpoint result: restore") {
			t.Fatalf("second restore output:\n%s", out3)
		}
		if e.logLine("warm2", "decision=restore") == "" || e.logLine("warm2", "found in the node cache") == "" {
			t.Fatalf("the second restore did not come from the node cache:\n%s", e.logLine("warm2", "decision="))
		}
		e.remove("warm2")

		// The CLI lists the snapshot as available, then removes it from storage.
		ls, code := e.cli("ls", "-n", "test")
		if code != 0 || !regexp.MustCompile(m.UUID+`\s+AllSnapshotsAvailable\s+my-app`).MatchString(ls) {
			t.Fatalf("podsnapshot ls (exit %d):\n%s", code, ls)
		}
		if out, code := e.cli("rm", m.UUID); code != 0 {
			t.Fatalf("podsnapshot rm: exit %d\n%s", code, out)
		}
		objs, err := e.store.List(context.Background(), m.Dir()+"/")
		must(t, err)
		if len(objs) != 0 {
			t.Fatalf("objects left after podsnapshot rm: %v", objs)
		}
	})
}

func TestOtherSpecOrNoPolicyStartsCold(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newEnv(t, kind)
		log1 := e.start("base", myApp, slowinit...)
		harness.WaitForOutput(t, log1, "checkpoint result: resume", time.Minute)
		e.committed("base")
		e.remove("base")

		// Other args: another key, so a cold start (which checkpoints anew).
		other := append(append([]string{}, slowinit...), "-interval", "500ms")
		log2 := e.start("other-args", myApp, other...)
		harness.WaitForOutput(t, log2, "checkpoint result: resume", time.Minute)
		if d := e.decision("other-args"); !strings.Contains(d, "decision=\"cold start\"") || !strings.Contains(d, "no snapshot for key") {
			t.Fatalf("decision for other args: %s", d)
		}
		e.remove("other-args")

		// Other env: likewise.
		path, uri := harness.LogFile(t, "other-env")
		e.cd.MustCtr(t, e.runArgs(e.config, []string{"-d", "--log-uri", uri, "--label", myApp[0], "--env", "EXTRA=1"}, "other-env", slowinit...)...)
		harness.WaitForOutput(t, path, "checkpoint result: resume", time.Minute)
		if d := e.decision("other-env"); !strings.Contains(d, "no snapshot for key") {
			t.Fatalf("decision for other env: %s", d)
		}
		e.remove("other-env")

		// No policy: plain runsc, and /proc/gvisor/checkpoint cannot be written.
		out := e.cd.MustCtr(t, e.runArgs(e.config, []string{"--rm", "--label", "app=nobody"}, "nopolicy",
			"sh", "-c", "echo 1 > /proc/gvisor/checkpoint && echo writable || echo not-writable")...)
		if !strings.Contains(out, "not-writable") {
			t.Fatalf("without a policy /proc/gvisor/checkpoint: %q", out)
		}
		if d := e.decision("nopolicy"); !strings.Contains(d, "plain runsc") {
			t.Fatalf("decision without policy: %s", d)
		}
	})
}

func TestCorruptSnapshotStartsColdAndIsMarkedFailed(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newEnv(t, kind)
		log1 := e.start("orig", myApp, slowinit...)
		harness.WaitForOutput(t, log1, "checkpoint result: resume", time.Minute)
		m := e.committed("orig")
		e.remove("orig")

		// The pages file: pages.img.zst, or pages.img where it did not compress.
		pages := ""
		for _, f := range m.Files {
			if path.Base(f.Name) == manifest.PagesFile || path.Base(f.Name) == strings.TrimSuffix(manifest.PagesFile, ".zst") {
				pages = f.Name
			}
		}
		if pages == "" {
			t.Fatalf("no pages file in snapshot %s: %+v", m.UUID, m.Files)
		}
		flipByte(t, e, pages, -1)

		log2 := e.start("again", myApp, slowinit...)
		out := harness.WaitForOutput(t, log2, "memory ok", time.Minute)
		if !strings.Contains(out, "checkpoint result: resume") {
			t.Fatalf("cold start after corruption:\n%s", out)
		}
		d := e.decision("again")
		if !strings.Contains(d, "corrupt") || !strings.Contains(d, pages) {
			t.Fatalf("decision after corruption does not name the object: %s", d)
		}
		back, err := e.repo.Get(context.Background(), m.Namespace, m.Policy, m.UUID)
		must(t, err)
		if back.State != manifest.StateFailed {
			t.Fatalf("corrupt snapshot state %s, want Failed", back.State)
		}
		e.remove("again")
	})
}

// flipByte inverts one byte of a stored object: the one at off, or, for off < 0, the
// one in the middle.
func flipByte(t *testing.T, e *env, name string, off int64) {
	t.Helper()
	ctx := context.Background()
	rc, err := e.store.Get(ctx, name)
	must(t, err)
	data, err := io.ReadAll(rc)
	rc.Close()
	must(t, err)
	if off < 0 {
		off = int64(len(data) / 2)
	}
	data[off] ^= 0xff
	_, err = e.store.Put(ctx, name, bytes.NewReader(data))
	must(t, err)
}

func TestIgnoredAndIncompatibleSnapshots(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newEnv(t, kind)
		ctx := context.Background()
		log1 := e.start("src", myApp, slowinit...)
		harness.WaitForOutput(t, log1, "checkpoint result: resume", time.Minute)
		m := e.committed("src")
		e.remove("src")

		// A manifest naming another runsc version: cold start with the reason.
		m.Compat.RunscVersion = "runsc version release-19990101.0"
		data, err := manifest.Encode(m)
		must(t, err)
		_, err = e.store.Put(ctx, m.ObjectName(), bytes.NewReader(data))
		must(t, err)
		log2 := e.start("skew", myApp, slowinit...)
		harness.WaitForOutput(t, log2, "checkpoint result: resume", time.Minute)
		if d := e.decision("skew"); !strings.Contains(d, "incompatible") || !strings.Contains(d, "release-19990101.0") {
			t.Fatalf("decision for version skew: %s", d)
		}
		e.remove("skew")

		// Objects without a manifest are no snapshot: remove every manifest and the
		// next run starts cold, saying there is no snapshot for the key.
		for _, s := range e.snapshots() {
			must(t, e.store.Delete(ctx, s.ObjectName()))
		}
		log3 := e.start("nomanifest", myApp, slowinit...)
		harness.WaitForOutput(t, log3, "checkpoint result: resume", time.Minute)
		if d := e.decision("nomanifest"); !strings.Contains(d, "no snapshot for key") {
			t.Fatalf("decision with objects but no manifest: %s", d)
		}
		e.remove("nomanifest")
	})
}

// TestStorageUnreachable: a store that does not answer costs Create at most 5 s, then
// the pod starts cold.
func TestStorageUnreachable(t *testing.T) {
	e := newEnv(t, gcsStore)
	baseline := timeRun(t, e, e.config, "baseline", "app=nobody")

	// A policy whose bucket lives on an emulator that accepts connections but never
	// answers.
	l, err := listenSilently(t)
	must(t, err)
	e.cd.Stop(t)
	e.cd = harness.StartContainerd(t, harness.ContainerdOptions{
		ShimDir: harness.BuildShim(t), Env: []string{"STORAGE_EMULATOR_HOST=" + l},
	})
	e.imageCache = e.cd.ImportImages(t)
	took := timeRun(t, e, e.config, "unreachable", myApp[0])
	d := e.decision("unreachable")
	if !strings.Contains(d, "unreachable") && !strings.Contains(d, "failed") {
		t.Fatalf("decision with storage down: %s", d)
	}
	if took-baseline > 5*time.Second {
		t.Fatalf("storage down added %v to Create+Start (baseline %v), more than 5 s", took-baseline, baseline)
	}
	t.Logf("ctr run -d with storage down: %v, without a policy: %v", took, baseline)
}

func timeRun(t *testing.T, e *env, config, id, label string) time.Duration {
	t.Helper()
	start := time.Now()
	e.cd.MustCtr(t, e.runArgs(config, []string{"-d", "--label", label}, id, "counter")...)
	took := time.Since(start)
	e.remove(id)
	return took
}

// listenSilently accepts TCP connections on 127.0.0.1 and never answers them.
func listenSilently(t *testing.T) (string, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return "", err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return "", err
	}
	if err := syscall.Listen(fd, 128); err != nil {
		return "", err
	}
	t.Cleanup(func() { syscall.Close(fd) })
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port), nil
}

// TestCheckpointThatCannotBeWritten: a work dir too small for the image makes the save
// fail inside gVisor: the workload reads "error" and keeps running; nothing is uploaded.
func TestCheckpointThatCannotBeWritten(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newEnv(t, kind)
		small := filepath.Join(e.dir, "small")
		must(t, os.MkdirAll(small, 0o755))
		must(t, syscall.Mount("tmpfs", small, "tmpfs", 0, "size=4m"))
		t.Cleanup(func() { _ = syscall.Unmount(small, syscall.MNT_DETACH) })
		config := e.writeConfig("small.toml", small)

		log := e.startWith(config, "full", myApp, slowinit...)
		out := harness.WaitForOutput(t, log, "count 2", time.Minute)
		if !strings.Contains(out, "checkpoint result: error") || !strings.Contains(out, "memory ok") {
			t.Fatalf("output with an unwritable checkpoint:\n%s", out)
		}
		time.Sleep(time.Second) // an upload, if one wrongly started, would show by now
		if line := e.logLine("full", "podsnapshot: committed"); line != "" {
			t.Fatalf("a failed checkpoint was committed: %s", line)
		}
		if n := len(e.snapshots()); n != 0 {
			t.Fatalf("%d snapshots in the store after a failed checkpoint", n)
		}
		objs, err := e.store.List(context.Background(), "")
		must(t, err)
		if len(objs) != 0 {
			t.Fatalf("objects uploaded after a failed checkpoint: %v", objs)
		}
		e.remove("full")
	})
}

func TestPostCheckpointStop(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newEnv(t, kind)
		r := e.cd.Ctr(t, e.runArgs(e.config, []string{"--rm", "--label", "app=stopper"}, "stopper", slowinit...)...)
		if r.ExitCode != 0 {
			t.Fatalf("postCheckpoint stop: exit %d\n%s", r.ExitCode, r)
		}
		if strings.Contains(r.Stdout, "count 0") {
			t.Fatalf("the pod kept running after a stop checkpoint:\n%s", r.Stdout)
		}
		ms := e.snapshots()
		if len(ms) != 1 || ms[0].Policy != "stopper" || ms[0].State != manifest.StateCommitted {
			t.Fatalf("after a stop checkpoint the store holds %v", ms)
		}
	})
}

func TestManualCheckpoint(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newEnv(t, kind)
		log1 := e.start("manual1", []string{"app=manual"}, "counter", "-interval", "200ms")
		harness.WaitForOutput(t, log1, "count 5", time.Minute)
		// ctr's flags the shim cannot honour are refused, named, and nothing is saved.
		if r := e.cd.Ctr(t, "task", "checkpoint", "--exit", "manual1"); r.ExitCode == 0 || !strings.Contains(r.Stderr+r.Stdout, "exit (ctr --exit)") {
			t.Fatalf("ctr task checkpoint --exit under postCheckpoint: resume: %s", r)
		}
		if n := len(e.snapshots()); n != 0 {
			t.Fatalf("%d snapshots after a refused checkpoint, want 0", n)
		}
		out, code := e.cli("checkpoint", "--address", e.cd.Address, "--namespace", e.cd.Namespace, "manual1")
		if code != 0 || !strings.Contains(out, "committed") {
			t.Fatalf("podsnapshot checkpoint: exit %d\n%s", code, out)
		}
		saved := lastCount(t, log1)
		e.remove("manual1")
		if n := len(e.snapshots()); n != 1 {
			t.Fatalf("%d snapshots after a manual checkpoint, want 1", n)
		}

		log2 := e.start("manual2", []string{"app=manual"}, "counter", "-interval", "200ms")
		out2 := harness.WaitForOutput(t, log2, "count "+strconv.Itoa(saved+3), time.Minute)
		first := firstCount(t, out2)
		if first < 6 || first > saved+1 {
			t.Fatalf("restored counter starts at %d; the checkpoint was taken at about %d:\n%s", first, saved, out2)
		}
		e.remove("manual2")
	})
}

var countLine = regexp.MustCompile(`count (\d+)`)

func lastCount(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	must(t, err)
	all := countLine.FindAllStringSubmatch(string(data), -1)
	if len(all) == 0 {
		t.Fatalf("no count line in %s", path)
	}
	n, _ := strconv.Atoi(all[len(all)-1][1])
	return n
}

func firstCount(t *testing.T, out string) int {
	t.Helper()
	m := countLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no count line in:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestDeleteDuringUpload: deleting a task while its snapshot uploads finishes in bounded
// time and leaves either a complete snapshot or nothing at all in storage: no files
// without a manifest, no temporary parts.
func TestDeleteDuringUpload(t *testing.T) {
	forStores(t, func(t *testing.T, kind storeKind) {
		e := newEnv(t, kind)
		log := e.start("big", myApp, "slowinit", "-mib", "384", "-seconds", "1", "-checkpoint")
		harness.WaitForOutput(t, log, "checkpoint result: resume", time.Minute)
		start := time.Now()
		e.cd.MustCtr(t, "task", "rm", "-f", "big")
		e.cd.MustCtr(t, "container", "rm", "big")
		if took := time.Since(start); took > 20*time.Second {
			t.Fatalf("task rm -f during an upload took %v", took)
		}
		e.uploadAllOrNothing("delete")
	})
}

// allObjects lists every object in the store, temporaries included.
func (e *env) allObjects() []string {
	e.t.Helper()
	if e.gcs != nil {
		return e.gcs.Objects(e.t, "snapshots")
	}
	var names []string
	root := strings.TrimPrefix(e.storeURL, "file://")
	filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, strings.TrimPrefix(path, root+"/"))
		}
		return nil
	})
	return names
}

// TestKillStopModeDuringSave: a postCheckpoint: stop task killed while it saves ends at
// once as a killed task (137) and its snapshot is abandoned.
func TestKillStopModeDuringSave(t *testing.T) {
	e := newEnv(t, localStore)
	log := e.start("stopkill", []string{"app=stopper"}, "slowinit", "-mib", "512", "-seconds", "1", "-checkpoint")
	harness.WaitForOutput(t, log, "ready", time.Minute)
	start := time.Now()
	e.cd.Ctr(t, "task", "kill", "-s", "SIGKILL", "stopkill")
	harness.Eventually(t, 20*time.Second, "killed stop-mode task ends", func() bool { return taskStatus(e, "stopkill") == "STOPPED" })
	t.Logf("task ended %v after the kill", time.Since(start))
	r := e.cd.MustCtr(t, "task", "rm", "stopkill")
	if !strings.Contains(r, "137") {
		// ctr task rm prints nothing; read the status from the shim's exit line instead.
		if line := e.exitLine("stopkill"); !strings.Contains(line, "status=137") {
			t.Fatalf("killed stop-mode task exited with %q, want 137", line)
		}
	}
	e.cd.MustCtr(t, "container", "rm", "stopkill")
	if ms := e.snapshots(); len(ms) != 0 {
		t.Fatalf("a killed stop-mode task committed %d snapshots", len(ms))
	}
}

// exitLine returns the shim's "process exited" line of container id.
func (e *env) exitLine(id string) string {
	var found string
	for _, line := range strings.Split(e.cd.Logs(), "\n") {
		if strings.Contains(line, "process exited") && strings.Contains(line, "id="+id+" ") {
			found = line
		}
	}
	return found
}

// TestSaveDirect: with save_direct the shim asks gVisor for an O_DIRECT pages file (the
// work dir here takes it), and the snapshot saved that way restores like any other.
func TestSaveDirect(t *testing.T) {
	e := newEnv(t, localStore)
	cfg, err := os.ReadFile(e.config)
	must(t, err)
	must(t, os.WriteFile(e.config, append([]byte("save_direct = true\n"), cfg...), 0o644))
	log1 := e.start("direct-cold", myApp, slowinit...)
	harness.WaitForOutput(t, log1, "checkpoint result: resume", time.Minute)
	bundle := filepath.Join(e.cd.State, "io.containerd.runtime.v2.task", "test", "direct-cold", "config.json")
	data, err := os.ReadFile(bundle)
	must(t, err)
	var spec struct{ Annotations map[string]string }
	must(t, json.Unmarshal(data, &spec))
	if spec.Annotations["dev.gvisor.internal.checkpoint.direct"] != "true" {
		t.Fatalf("the bundle of a save_direct pod does not ask for O_DIRECT: %v", spec.Annotations)
	}
	m := e.committed("direct-cold")
	e.remove("direct-cold")
	log2 := e.start("direct-warm", myApp, slowinit...)
	out := harness.WaitForOutput(t, log2, "memory ok", time.Minute)
	if !strings.Contains(out, "checkpoint result: restore") || e.logLine("direct-warm", "PodSnapshot test/"+m.UUID) == "" {
		t.Fatalf("restore of a snapshot saved with O_DIRECT:\n%s", out)
	}
	e.remove("direct-warm")
}
