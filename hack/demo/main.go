// Command demo shows a pod snapshot end to end on this machine (`make demo`): it starts a
// private containerd with the podsnapshot shim, runs the slowinit workload (it fills
// memory for a while, then asks gVisor to checkpoint it), waits until the snapshot is
// committed to the store, removes the container, runs the same spec again and times the
// restore. It prints a table of the timings and sizes on stdout, progress on stderr, and
// removes everything it started, also on error or Ctrl-C.
//
//	go run ./hack/demo [-storage local|gcs] [-workload slowinit|redis|python|nginx|torch] [-mib 256] [-seconds 8]
//
// -workload picks a real program instead of slowinit (see workload.go): redis-server
// with 1,000,000 keys, python3 with 200 MB of objects, nginx with four workers, or a
// PyTorch (CPU) model server with 1 GiB of weights answering GET /infer; -mib and
// -seconds size slowinit only.
//
// It needs root, `make deps` and `make build`. The setup and teardown live in
// internal/testenv/lab, which the benchmarks (hack/bench) use too.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
)

func main() {
	storage := flag.String("storage", "local", "snapshot store: local (a directory) or gcs (a bucket on fake-gcs-server)")
	mib := flag.Int("mib", 256, "MiB of memory the workload fills")
	seconds := flag.Float64("seconds", 8, "seconds the workload spends filling it (its cold initialisation)")
	workload := flag.String("workload", "slowinit", "slowinit, or a real program: redis, python, nginx or torch")
	flag.Parse()
	if _, ok := apps[*workload]; flag.NArg() > 0 || *mib <= 0 || *seconds < 0 || (!ok && *workload != "slowinit") {
		fmt.Fprintln(os.Stderr, "usage: demo [-storage local|gcs] [-workload slowinit|redis|python|nginx|torch] [-mib N>0] [-seconds S>=0]")
		os.Exit(2)
	}

	// The first Ctrl-C (or SIGTERM) cancels the run; cleanup then runs with its own
	// bounded timeouts. Further signals are ignored so cleanup can finish: an interrupted
	// cleanup would leave sandboxes and mounts behind.
	ctx := lab.InterruptContext(logf)

	err := run(ctx, config{storage: lab.Storage(*storage), mib: *mib, seconds: *seconds, workload: *workload})
	if err != nil && ctx.Err() != nil {
		logf("interrupted: %v", err)
		os.Exit(130)
	}
	if err != nil {
		logf("FAILED: %v", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s demo: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

type config struct {
	storage lab.Storage
	mib     int
	seconds float64
	// workload is "slowinit" or a key of apps.
	workload string
}

// result holds what the demo measured.
type result struct {
	coldToReady        time.Duration // ctr run invoked -> "ready" seen in the output
	coldCtrRun         time.Duration // how long `ctr run -d` itself took (Create + Start)
	triggerToCommitted time.Duration // "ready" (the trigger) -> committed
	fromLogTimes       bool          // triggerToCommitted from the lines' own timestamps
	uploadMs           int64         // the shim's part of it: compress, upload, verify, manifest
	rawBytes           int64
	storedBytes        int64
	snapshot           string        // UUID
	restoreToReady     time.Duration // ctr run invoked -> "checkpoint result: restore" + "memory ok"
	restoreCtrRun      time.Duration
	shimRestore        string // the shim's own account: "in N ms (download D ms, runsc restore R ms)"
	restoredOutput     string // the lines the restored copy printed, abridged
	ls                 string // `podsnapshot ls -o wide`
}

func run(ctx context.Context, cfg config) (err error) {
	start := time.Now()
	l, err := lab.Start(ctx, lab.Options{Storage: cfg.storage, Logf: logf})
	if err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	// A safety net for a panic; the normal path closes below, before printing. Close
	// does its work once.
	defer l.Close()
	machine := l.DescribeMachine()
	storeURL := l.StoreURL

	var res result
	var measureErr error
	if cfg.workload == "slowinit" {
		measureErr = measure(ctx, l, cfg, &res)
	} else if measureErr = l.UseApp(ctx, cfg.workload); measureErr == nil {
		measureErr = measureApp(ctx, l, cfg, &res)
	}
	if measureErr != nil && ctx.Err() == nil {
		// Show what the workload and the shim said: that is where the reason is.
		dumpDiagnostics(l)
	}

	// Clean up before printing, so the report covers everything and stdout stays one
	// block.
	logf("cleaning up")
	rep := l.Close()
	logf("cleanup: %s", rep)
	if measureErr != nil {
		if !rep.Clean() {
			return fmt.Errorf("%w; cleanup: %s", measureErr, rep)
		}
		return measureErr
	}

	printResults(os.Stdout, cfg, machine, storeURL, res, rep, time.Since(start))
	if !rep.Clean() {
		return fmt.Errorf("cleanup incomplete: %s", rep)
	}
	return nil
}

// measure runs the workload cold, waits for its snapshot, removes it and runs the same
// spec again, filling res.
func measure(ctx context.Context, l *lab.Lab, cfg config, res *result) error {
	// The same spec both times: image, command, labels. The container ID differs, and is
	// not part of the snapshot key.
	command := []string{"slowinit", "-mib", strconv.Itoa(cfg.mib),
		"-seconds", strconv.FormatFloat(cfg.seconds, 'f', -1, 64), "-checkpoint"}
	labels := []string{lab.AppLabel}
	initTimeout := time.Duration(cfg.seconds*float64(time.Second)) + 2*time.Minute

	// 1. Cold start. "Ready" is when the workload's "ready" line reaches its output file,
	// seen from outside.
	const coldID, warmID = "slowinit-cold", "slowinit-restored"
	logf("cold start: %s (%d MiB over %gs)", strings.Join(command, " "), cfg.mib, cfg.seconds)
	cold, err := l.Run(ctx, coldID, labels, command...)
	if err != nil {
		return fmt.Errorf("cold start: %w", err)
	}
	res.coldCtrRun = cold.Returned.Sub(cold.Invoked)
	ready, err := l.WaitOutput(ctx, cold, initTimeout, `"ready" line`, func(s string) bool { return strings.HasPrefix(s, "ready ") })
	if err != nil {
		return fmt.Errorf("cold start: %w", err)
	}
	res.coldToReady = ready.Seen.Sub(cold.Invoked)
	logf("ready after %v; the workload triggers its checkpoint now", res.coldToReady.Round(time.Millisecond))

	// 2. The checkpoint. The workload writes to /proc/gvisor/checkpoint right after
	// printing "ready", so that line's timestamp is the trigger; the shim's "committed"
	// line (its manifest is stored) ends it.
	committed, entry, err := waitCommitted(ctx, l, cold, coldID, res)
	if err != nil {
		return err
	}
	// Prefer the lines' own clocks (the workload's "ready <time>" and the log's time=,
	// both the host's clock), which are free of our polling delay; else arrival times.
	res.triggerToCommitted = committed.Seen.Sub(ready.Seen)
	if trig, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(ready.Text, "ready ")); err == nil && !entry.Time.IsZero() {
		if d := entry.Time.Sub(trig); d > 0 {
			res.triggerToCommitted, res.fromLogTimes = d, true
		}
	}
	logf("snapshot %s committed %v after the trigger (by arrival of the lines: %v)", res.snapshot,
		res.triggerToCommitted.Round(time.Millisecond), committed.Seen.Sub(ready.Seen).Round(time.Millisecond))
	logf("shim: %s", committed.Text)
	if _, err := l.WaitOutput(ctx, cold, time.Minute, `"memory ok" line`, contains("memory ok")); err != nil {
		return fmt.Errorf("after the checkpoint: %w", err)
	}

	// 3. Remove the pod, then run the same spec again: the shim finds the snapshot by
	// its key and restores it where a cold start would run.
	// The restored copy's pending read of /proc/gvisor/checkpoint returns "restore"; it
	// then verifies its memory. Both seen: the restored pod is ready.
	warm, _, err := runAgain(ctx, l, res, coldID, warmID, labels, command...)
	if err != nil {
		return err
	}
	memOK, err := l.WaitOutput(ctx, warm, time.Minute, "memory check", func(s string) bool { return strings.HasPrefix(s, "memory ") })
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if memOK.Text != "memory ok" {
		return fmt.Errorf("restore: the restored memory is wrong: %s", memOK.Text)
	}
	res.restoreToReady = memOK.Seen.Sub(warm.Invoked)
	logf("restored and ready after %v", res.restoreToReady.Round(time.Millisecond))

	// 4. The restored copy goes on from the saved state: it counts, and it never
	// initialised again (no "filling" or "ready" line).
	if _, err := l.WaitOutput(ctx, warm, 30*time.Second, `"count 2" line`, contains("count 2")); err != nil {
		return fmt.Errorf("restored workload: %w", err)
	}
	out := warm.Output.Text()
	if strings.Contains(out, "slowinit: filling") || regexp.MustCompile(`(?m)^ready `).MatchString(out) {
		return fmt.Errorf("restored workload initialised again:\n%s", out)
	}
	res.restoredOutput = strings.Join(strings.Split(strings.TrimSpace(out), "\n"), " | ")
	if line, _, err := l.ShimLine(ctx, 10*time.Second, warmID, "podsnapshot: restored"); err == nil {
		logf("shim: %s", line.Text)
		if m := regexp.MustCompile(`in \d+ ms \(.*\)`).FindString(lab.ParseLogEntry(line.Text).Msg); m != "" {
			res.shimRestore = m
		}
	}

	res.ls, err = l.CLI(ctx, "ls", "-n", l.Namespace, "-o", "wide")
	if err != nil {
		return err
	}
	return l.Remove(ctx, warmID)
}

// runAgain removes the cold pod coldID and runs the same spec as warmID; it records
// how long `ctr run` took and returns the task and its "checkpoint result" line, which
// must say restore: otherwise the pod started cold and the error says why.
func runAgain(ctx context.Context, l *lab.Lab, res *result, coldID, warmID string, labels []string, command ...string) (*lab.Task, lab.Line, error) {
	logf("removing %s", coldID)
	if err := l.Remove(ctx, coldID); err != nil {
		return nil, lab.Line{}, err
	}
	logf("second run with the same spec: %s", warmID)
	warm, err := l.Run(ctx, warmID, labels, command...)
	if err != nil {
		return nil, lab.Line{}, fmt.Errorf("restore: %w", err)
	}
	res.restoreCtrRun = warm.Returned.Sub(warm.Invoked)
	back, err := l.WaitOutput(ctx, warm, 2*time.Minute, `"checkpoint result" line`, contains("checkpoint result: "))
	if err != nil {
		return nil, lab.Line{}, fmt.Errorf("restore: %w", err)
	}
	if !strings.HasSuffix(back.Text, ": restore") {
		_, decision, _ := l.ShimLine(ctx, time.Second, warmID, "decision=")
		return nil, lab.Line{}, fmt.Errorf("restore: the second run read %q, so it started cold; the shim said: %s", back.Text, decision.Msg)
	}
	return warm, back, nil
}

// dumpDiagnostics writes the tasks' output and the shim's lines to stderr.
func dumpDiagnostics(l *lab.Lab) {
	var b strings.Builder
	for _, line := range l.Log().Lines() {
		if strings.Contains(line.Text, "podsnapshot") || strings.Contains(line.Text, "level=error") {
			b.WriteString("  " + line.Text + "\n")
		}
	}
	logf("shim and error lines of containerd's log:\n%s", b.String())
	outs, _ := filepath.Glob(filepath.Join(l.Dir, "out-*.log"))
	for _, p := range outs {
		if out, err := os.ReadFile(p); err == nil {
			logf("output of %s:\n%s", strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), "out-"), ".log"), bytes.Trim(out, "\x00"))
		}
	}
}

func printResults(w io.Writer, cfg config, m lab.Machine, storeURL string, r result, rep lab.CleanupReport, took time.Duration) {
	secs := func(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }
	mb := func(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
	throughput := float64(r.rawBytes) / 1e6 / r.triggerToCommitted.Seconds()
	clock := "arrival of the lines"
	if r.fromLogTimes {
		clock = "timestamps in the lines"
	}

	if cfg.workload == "slowinit" {
		fmt.Fprintf(w, "\npodsnapshot demo: slowinit -mib %d -seconds %g -checkpoint\n", cfg.mib, cfg.seconds)
	} else {
		fmt.Fprintf(w, "\npodsnapshot demo: %s (%s)\n", cfg.workload, ociarchive.AppImages[cfg.workload])
	}
	fmt.Fprintf(w, "machine:  %s\n", m)
	if m.Runsc != "" {
		fmt.Fprintf(w, "runsc:    %s\n", m.Runsc)
	}
	fmt.Fprintf(w, "storage:  %s (%s)\n\n", cfg.storage, storeURL)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(name, value, note string) { fmt.Fprintf(tw, "  %s\t%12s\t%s\n", name, value, note) }
	row("cold start to ready", secs(r.coldToReady), fmt.Sprintf(`ctr run -> "ready" in the output (ctr run -d itself: %s)`, secs(r.coldCtrRun)))
	row("trigger -> committed", secs(r.triggerToCommitted), fmt.Sprintf("save + compress + upload + verify + manifest; %s; shim upload part %d ms", clock, r.uploadMs))
	row("throughput", fmt.Sprintf("%.1f MB/s", throughput), "raw image bytes / (trigger -> committed)")
	row("snapshot raw", mb(r.rawBytes), fmt.Sprintf("%d bytes, gVisor image", r.rawBytes))
	row("snapshot stored", mb(r.storedBytes), fmt.Sprintf("%d bytes, zstd (files that do not compress are stored as they are); ratio %.1fx", r.storedBytes, float64(r.rawBytes)/float64(r.storedBytes)))
	shim := ""
	if r.shimRestore != "" {
		shim = "; shim: restored " + r.shimRestore
	}
	readyAt := `"checkpoint result: restore" + "memory ok"`
	if cfg.workload != "slowinit" {
		readyAt = `"checkpoint result: restore"`
	}
	row("restore to ready", secs(r.restoreToReady), fmt.Sprintf(`ctr run -> %s (ctr run -d itself: %s)%s`, readyAt, secs(r.restoreCtrRun), shim))
	row("speed-up", fmt.Sprintf("%.1fx", r.coldToReady.Seconds()/r.restoreToReady.Seconds()), "cold start to ready / restore to ready")
	tw.Flush()

	if cfg.workload == "slowinit" {
		fmt.Fprintf(w, "\nsnapshot %s; the restored copy printed: %s\n", r.snapshot, abridge(r.restoredOutput, 160))
	} else {
		fmt.Fprintf(w, "\nsnapshot %s; the restored copy: %s\n", r.snapshot, r.restoredOutput)
	}
	fmt.Fprintf(w, "\npodsnapshot ls -n demo -o wide:\n%s", indent(r.ls))
	fmt.Fprintf(w, "\ncleanup:  %s\n", rep)
	fmt.Fprintf(w, "total:    %s\n", took.Round(100*time.Millisecond))
}

// contains matches lines containing sub.
// waitCommitted waits until the cold-started workload read "resume" from its
// checkpoint and the shim logged the snapshot committed; it records the snapshot's name
// and sizes in res and returns the shim's line (for its arrival time and clock).
func waitCommitted(ctx context.Context, l *lab.Lab, cold *lab.Task, coldID string, res *result) (lab.Line, lab.LogEntry, error) {
	result, err := l.WaitOutput(ctx, cold, 5*time.Minute, `"checkpoint result" line`, contains("checkpoint result: "))
	if err != nil {
		return lab.Line{}, lab.LogEntry{}, fmt.Errorf("checkpoint: %w", err)
	}
	if !strings.HasSuffix(result.Text, ": resume") {
		return lab.Line{}, lab.LogEntry{}, fmt.Errorf("checkpoint: the workload read %q, want resume", result.Text)
	}
	committed, entry, err := l.ShimLine(ctx, 5*time.Minute, coldID, "podsnapshot: committed")
	if err != nil {
		return lab.Line{}, lab.LogEntry{}, fmt.Errorf("checkpoint: %w", err)
	}
	res.snapshot = entry.Fields["snapshot"]
	res.rawBytes, res.storedBytes, res.uploadMs = entry.Int("raw_bytes"), entry.Int("stored_bytes"), entry.Int("upload_ms")
	if res.snapshot == "" || res.rawBytes <= 0 || res.storedBytes <= 0 {
		return lab.Line{}, lab.LogEntry{}, fmt.Errorf("checkpoint: cannot read snapshot, raw_bytes and stored_bytes from the shim's line: %s", committed.Text)
	}
	return committed, entry, nil
}

func contains(sub string) func(string) bool {
	return func(s string) bool { return strings.Contains(s, sub) }
}

func indent(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("  " + line + "\n")
	}
	return b.String()
}

func abridge(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + " ..."
}
