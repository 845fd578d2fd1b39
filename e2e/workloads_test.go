package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
)

// Real programs from Debian (redis-server, python3, nginx), packaged by
// internal/testenv/ociarchive with their shared libraries, snapshotted by their own wrapper once
// ready and restored into a new container with the same spec. Each case logs
// cold-start-to-ready and restore-to-ready, measured from outside: from `ctr run` to the
// wrapper's "ready" line, and from `ctr run` to the restored copy's
// "checkpoint result: restore" line.

// appImage builds the image of a real program (redis, python or nginx) into a directory
// of the calling test; subtests share it.
func appImage(t *testing.T, short string) harness.Image {
	t.Helper()
	spec, err := ociarchive.AppSpec(short, harness.Busybox(t), harness.RepoRoot(t))
	if err != nil {
		t.Fatalf("image %s: %v (run `make deps`: it installs the Debian packages)", short, err)
	}
	archive := filepath.Join(t.TempDir(), short+".tar")
	res, err := ociarchive.BuildFile(archive, spec)
	if err != nil {
		t.Fatalf("image %s: %v", short, err)
	}
	return harness.Image{Name: res.Name, Archive: archive, Digest: res.ManifestDigest}
}

// appRun is one snapshot-and-restore round of a real program.
type appRun struct {
	e           *env
	img         harness.Image
	coldLog     string // output of the cold start
	warmLog     string // output of the restored copy
	snapshot    *manifest.Manifest
	coldToReady time.Duration
	restoreTo   time.Duration
	readyLine   string // the cold start's ready line
}

// appConfig writes a shim config for the real programs: the env's, plus runsc's
// network=none. Under ctr a container gets a fresh network namespace whose loopback is
// down, and runsc (network=sandbox) skips interfaces that are down, so the sandbox would
// have no 127.0.0.1 for redis and nginx to listen on; network=none gives the sandbox
// netstack's own loopback (under CRI, CNI brings lo up instead).
func (e *env) appConfig() string {
	e.t.Helper()
	path := e.writeConfig("shim-apps.toml", e.workDir)
	b, err := os.ReadFile(path)
	must(e.t, err)
	must(e.t, os.WriteFile(path, append(b, "[runsc.flags]\nnetwork = \"none\"\n"...), 0o644))
	return path
}

// startApp runs img's default command detached, labelled app=my-app, output to a file.
// A cleanup removes the container if the test ends before it does.
func (e *env) startApp(config string, img harness.Image, id string) string {
	e.t.Helper()
	path, uri := harness.LogFile(e.t, id)
	e.cd.MustCtr(e.t, "run", "--runtime", runtime, "--runtime-config-path", config,
		"-d", "--log-uri", uri, "--label", myApp[0], img.Name, id)
	e.t.Cleanup(func() {
		if e.cd.Ctr(e.t, "container", "info", id).ExitCode == 0 {
			e.remove(id)
		}
	})
	return path
}

// waitApp waits until the output file at path holds want, like harness.WaitForOutput,
// but fails at once when the wrapper reports that its program exited.
func waitApp(t *testing.T, path, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := printable(readFile(path))
		if strings.Contains(s, want) {
			return s
		}
		if strings.Contains(s, "redis-server exited") || strings.Contains(s, "nginx exited") ||
			strings.Contains(s, "Traceback (most recent call last)") {
			t.Fatalf("the workload failed before %q:\n%s", want, s)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q not in %s after %v; it holds:\n%s", want, path, timeout, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// snapshotAndRestore imports img, cold-starts it as "cold" until its snapshot is
// committed, removes it, and runs the same spec as "warm", which must be restored. ready
// is the line (prefix) that says the cold start is ready.
func snapshotAndRestore(t *testing.T, kind storeKind, img harness.Image, ready string, timeout time.Duration) *appRun {
	t.Helper()
	e := newEnv(t, kind)
	e.cd.MustCtr(t, harness.ImportArgs(img.Archive)...)
	r := &appRun{e: e, img: img}
	config := e.appConfig()

	start := time.Now()
	r.coldLog = e.startApp(config, img, "cold")
	cold := waitApp(t, r.coldLog, ready, timeout)
	r.coldToReady = time.Since(start)
	r.readyLine = cold[strings.Index(cold, ready):]
	r.readyLine, _, _ = strings.Cut(r.readyLine, "\n")
	out := waitApp(t, r.coldLog, "checkpoint result: ", timeout)
	if !strings.Contains(out, "checkpoint result: resume") {
		t.Fatalf("the cold start's checkpoint did not succeed:\n%s", out)
	}
	r.snapshot = e.committed("cold")
	e.remove("cold")

	start = time.Now()
	r.warmLog = e.startApp(config, img, "warm")
	out = waitApp(t, r.warmLog, "checkpoint result: restore", timeout)
	r.restoreTo = time.Since(start)
	if strings.Contains(out, ready) {
		t.Fatalf("the restored copy started again instead of resuming:\n%s", printable(out))
	}
	if d := e.decision("warm"); !strings.Contains(d, "decision=restore") || !strings.Contains(d, r.snapshot.UUID) {
		t.Fatalf("decision for the second run: %s", d)
	}
	return r
}

// report logs the timings in one greppable line.
func (r *appRun) report(t *testing.T, name string, kind storeKind) {
	var raw, stored int64
	for _, f := range r.snapshot.Files {
		raw, stored = raw+f.RawSize, stored+f.StoredSize
	}
	t.Logf("workload=%s store=%s cold-start-to-ready=%.2fs restore-to-ready=%.2fs snapshot-raw=%.1fMiB stored=%.1fMiB (%s)",
		name, kind, r.coldToReady.Seconds(), r.restoreTo.Seconds(), float64(raw)/(1<<20), float64(stored)/(1<<20), r.readyLine)
}

// exec runs a command in the restored task and returns its stdout; it must exit 0.
func (r *appRun) exec(t *testing.T, execID string, cmd ...string) string {
	t.Helper()
	args := append([]string{"task", "exec", "--exec-id", execID, "warm"}, cmd...)
	res := r.e.cd.Ctr(t, args...)
	if res.ExitCode != 0 {
		t.Fatalf("exec in the restored task: %s", res)
	}
	return res.Stdout
}

// printable drops the NUL bytes a restored process's output file starts with.
func printable(s string) string { return strings.ReplaceAll(s, "\x00", "") }

func TestWorkloadRedis(t *testing.T) {
	img := appImage(t, "redis")
	forStores(t, func(t *testing.T, kind storeKind) {
		r := snapshotAndRestore(t, kind, img, "ready 1000000 keys", 3*time.Minute)
		cli := func(id string, args ...string) string {
			return strings.TrimSpace(r.exec(t, id, append([]string{"redis-cli"}, args...)...))
		}
		if n := cli("dbsize", "DBSIZE"); n != "1000000" {
			t.Fatalf("DBSIZE after restore = %q, want 1000000", n)
		}
		for _, k := range []string{"0", "123456", "999999"} {
			if v := cli("get-"+k, "GET", "key:"+k); v != "value:"+k {
				t.Fatalf("GET key:%s after restore = %q, want value:%s", k, v, k)
			}
		}
		if v := cli("set", "SET", "after-restore", "yes"); v != "OK" {
			t.Fatalf("SET after restore = %q", v)
		}
		if v := cli("get-new", "GET", "after-restore"); v != "yes" {
			t.Fatalf("GET of a key written after restore = %q", v)
		}
		if n := cli("dbsize2", "DBSIZE"); n != "1000001" {
			t.Fatalf("DBSIZE after a write = %q, want 1000001", n)
		}
		r.report(t, "redis", kind)
	})
}

var verifyRe = regexp.MustCompile(`verify (ok|FAILED)[^\n]*`)

func TestWorkloadPython(t *testing.T) {
	img := appImage(t, "python")
	forStores(t, func(t *testing.T, kind storeKind) {
		r := snapshotAndRestore(t, kind, img, "ready modules=", 3*time.Minute)
		cold := printable(waitApp(t, r.coldLog, "verify ", 30*time.Second))
		m := regexp.MustCompile(`ready modules=(\d+) entries=(\d+) rss_mib=(\d+) checksum=(\w+)`).FindStringSubmatch(cold)
		if m == nil {
			t.Fatalf("no ready line in the cold start:\n%s", cold)
		}
		if mods, _ := strconv.Atoi(m[1]); mods < 250 {
			t.Fatalf("only %d modules imported:\n%s", mods, cold)
		}
		if rss, _ := strconv.Atoi(m[3]); rss < 200 {
			t.Fatalf("the structure holds only %d MiB:\n%s", rss, cold)
		}
		entries, sum := m[2], m[4]
		want := fmt.Sprintf("verify ok entries=%s checksum=%s import=", entries, sum)

		// Right after the restore the script verifies once by itself, then on SIGUSR1,
		// each time importing a module it never imported before.
		warm := printable(waitApp(t, r.warmLog, "verify ", time.Minute))
		if v := verifyRe.FindString(warm); !strings.HasPrefix(v, want) || strings.HasSuffix(v, "import=none") {
			t.Fatalf("verification after restore: %q, want %q...\n%s", v, want, warm)
		}
		r.e.cd.MustCtr(t, "task", "kill", "-s", "SIGUSR1", "warm")
		harness.Eventually(t, time.Minute, "second verification", func() bool {
			return len(verifyRe.FindAllString(printable(readFile(r.warmLog)), -1)) >= 2
		})
		all := verifyRe.FindAllString(printable(readFile(r.warmLog)), -1)
		if v := all[1]; !strings.HasPrefix(v, want) || strings.HasSuffix(v, "import=none") || v == all[0] {
			t.Fatalf("verification on SIGUSR1 after restore: %q, want %q<another module>", v, want)
		}
		// A new python process in the restored sandbox works too.
		out := r.exec(t, "py", "/usr/bin/python3", "-c", "import json, sqlite3, decimal; print(json.dumps([sqlite3.sqlite_version_info[0], str(decimal.Decimal(1)/4)]))")
		if strings.TrimSpace(out) != `[3, "0.25"]` {
			t.Fatalf("python3 in the restored sandbox printed %q", out)
		}
		r.report(t, "python", kind)
	})
}

func TestWorkloadNginx(t *testing.T) {
	img := appImage(t, "nginx")
	page := readFile(filepath.Join(harness.RepoRoot(t), "testdata", "workloads", "nginx", "index.html"))
	forStores(t, func(t *testing.T, kind storeKind) {
		r := snapshotAndRestore(t, kind, img, "ready podsnapshot nginx workload", 2*time.Minute)
		for i := range 3 {
			if got := r.exec(t, fmt.Sprintf("wget%d", i), "wget", "-qO-", "http://127.0.0.1/"); got != page {
				t.Fatalf("page served after restore:\n%q\nwant:\n%q", got, page)
			}
		}
		// The master and its four workers are back (busybox ps reads the sandbox's /proc).
		ps := r.exec(t, "ps", "ps", "-o", "pid,user,args")
		if c := strings.Count(ps, "nginx: master process"); c != 1 {
			t.Fatalf("%d nginx masters after restore:\n%s", c, ps)
		}
		if c := strings.Count(ps, "nginx: worker process"); c != 4 {
			t.Fatalf("%d nginx workers after restore, want 4:\n%s", c, ps)
		}
		if !regexp.MustCompile(`www-data\s+nginx: worker process`).MatchString(ps) {
			t.Fatalf("workers do not run as www-data:\n%s", ps)
		}
		// containerd's view (runsc ps): wrapper, master, four workers (and the exec'd ps).
		pids := strings.Count(r.e.cd.MustCtr(t, "task", "ps", "warm"), "\n") - 1
		if pids < 6 {
			t.Fatalf("ctr task ps lists %d processes after restore, want at least 6", pids)
		}
		r.report(t, "nginx", kind)
	})
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// TestWorkloadImagesReproducible builds each real-program image twice: same digest, so a
// snapshot taken from one build restores into a container of the other (the snapshot
// key holds the image digest).
func TestWorkloadImagesReproducible(t *testing.T) {
	for _, short := range []string{"redis", "python", "nginx"} {
		a, b := appImage(t, short), appImage(t, short)
		if a.Digest != b.Digest {
			t.Fatalf("%s: two builds give %s and %s", short, a.Digest, b.Digest)
		}
		if a.Name != ociarchive.AppImages[short] {
			t.Fatalf("%s: image name %s, want %s", short, a.Name, ociarchive.AppImages[short])
		}
	}
}
