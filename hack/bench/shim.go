package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
)

// cycle is one pass through the shim: a cold start that checkpoints itself, then the
// restores of that snapshot: the first with the node cache empty (streaming, the
// default), the second from the node cache, a third from the node cache through a shim
// config with restore_direct = false (pages.img read through the page cache), a fourth
// with the node cache emptied again through a shim config with stream_restore = false
// (the whole download first), and, on fake-gcs-server, four at once with the node cache
// emptied again.
type cycle struct {
	coldToReady        time.Duration
	triggerToCommitted time.Duration
	uploadMs           int64
	rawBytes           int64
	storedBytes        int64
	shimPeakUpload     int64         // the cold container's shim, VmHWM once committed
	shimUploadCPU      time.Duration // its CPU time from "ready" (the trigger) to committed
	snapshot           string
	pagesStored        int64 // stored bytes of the snapshot's pages file

	first, cached, whole restoreRun
	// buffered: the cached restore again, with restore_direct = false.
	buffered   restoreRun
	concurrent *concurrentRun // nil: not measured (local store)
	// concurrentCached: the same 4 at once again, the node cache holding the snapshot: what
	// 4 sandboxes restoring together cost on this machine without any download.
	concurrentCached *concurrentRun
}

type restoreRun struct {
	toReady  time.Duration // ctr run -> "checkpoint result: restore"
	toMemOK  time.Duration // ctr run -> "memory ok"
	ctrRun   time.Duration // ctr run -d itself (Create + Start)
	shimPeak int64         // the restored container's shim, VmHWM once restored
	// The shim's own account: download (lookup + download + verify + decompress, or the
	// cache lookup) and runsc restore.
	downloadMs, runscMs int64
	decision            string
	// cpuBusy: the fraction of the host's CPU time (all cores) spent busy from ctr run to
	// "memory ok" (/proc/stat).
	cpuBusy float64
	// streamed: pages.img streamed through the FUSE mount; the shim's line at the end of
	// the stream said how much it fetched (stored bytes) and how long the stream took.
	streamed     bool
	fetchedBytes int64
	streamMs     int64
	// syncMs: of streamMs, the fsync of the complete fill before it became the node
	// cache entry (the shim's sync_ms).
	syncMs int64
}

var restoredRE = regexp.MustCompile(`in (\d+) ms \(download (\d+) ms, runsc restore (\d+) ms\)`)

// shimCycle runs one cycle in lab l; n numbers it so container IDs stay unique.
// configs are the shim configs with stream_restore = false and with restore_direct = false.
func shimCycle(ctx context.Context, l *lab.Lab, mib int, seconds float64, n int, configs benchConfigs) (*cycle, error) {
	command := slowinitCommand(mib, seconds)
	labels := []string{lab.AppLabel}
	prefix := fmt.Sprintf("s%d-%s-%d", mib, l.Storage, n)
	coldID := prefix + "-cold"
	c := &cycle{}

	cold, err := l.Run(ctx, coldID, labels, command...)
	if err != nil {
		return nil, fmt.Errorf("cold start: %w", err)
	}
	ready, err := coldReady(ctx, l, cold, time.Duration(seconds*float64(time.Second))+3*time.Minute)
	if err != nil {
		return nil, err
	}
	c.coldToReady = ready.Seen.Sub(cold.Invoked)
	cpu0 := shimCPU(coldID)

	committed, entry, err := awaitCommit(ctx, l, cold)
	if err != nil {
		return nil, err
	}
	c.shimPeakUpload = shimPeak(coldID)
	if cpu1 := shimCPU(coldID); cpu0 >= 0 && cpu1 >= 0 {
		c.shimUploadCPU = cpu1 - cpu0
	}
	c.snapshot = entry.Fields["snapshot"]
	c.rawBytes, c.storedBytes, c.uploadMs = entry.Int("raw_bytes"), entry.Int("stored_bytes"), entry.Int("upload_ms")
	if c.snapshot == "" || c.rawBytes <= 0 || c.storedBytes <= 0 {
		return nil, fmt.Errorf("checkpoint: no snapshot, raw_bytes, stored_bytes in the shim's line: %s", committed.Text)
	}
	c.triggerToCommitted = triggerToCommitted(ready, committed, entry)
	if err := l.Remove(ctx, coldID); err != nil {
		return nil, err
	}
	if c.pagesStored, err = pagesStoredSize(ctx, l, c.snapshot); err != nil {
		return nil, err
	}

	// Every restore starts from a node cache without this snapshot, but the second and
	// third (the cached ones).
	if err := emptyNodeCache(l); err != nil {
		return nil, err
	}
	streaming, whole := shimOptions(l.ShimConfig, labels), shimOptions(configs.whole, labels)
	buffered := shimOptions(configs.buffered, labels)
	for i, r := range []struct {
		rr   *restoreRun
		opts []string
	}{{&c.first, streaming}, {&c.cached, streaming}, {&c.buffered, buffered}, {&c.whole, whole}} {
		if r.rr == &c.whole {
			if err := emptyNodeCache(l); err != nil {
				return nil, err
			}
		}
		id := fmt.Sprintf("%s-restore%d", prefix, i+1)
		if err := restoreOnce(ctx, l, id, r.opts, command, c.snapshot, r.rr); err != nil {
			return nil, fmt.Errorf("restore %d of snapshot %s: %w", i+1, c.snapshot, err)
		}
	}
	if !strings.Contains(c.first.decision, "downloaded") && !adoptedDecision(c.first.decision) {
		return nil, fmt.Errorf("first restore of %s did not download: %s", c.snapshot, c.first.decision)
	}
	for _, r := range []restoreRun{c.cached, c.buffered} {
		if !strings.Contains(r.decision, "node cache") {
			return nil, fmt.Errorf("a second restore of %s did not come from the node cache: %s", c.snapshot, r.decision)
		}
	}
	if !strings.Contains(c.whole.decision, "downloaded") || c.whole.streamed {
		return nil, fmt.Errorf("restore of %s with stream_restore = false did not download it whole: %s", c.snapshot, c.whole.decision)
	}
	if l.Storage.OnGCS() {
		if err := emptyNodeCache(l); err != nil {
			return nil, err
		}
		if c.concurrent, err = concurrentRestores(ctx, l, prefix, streaming, command, c.snapshot, c.pagesStored, 4); err != nil {
			return nil, fmt.Errorf("concurrent restores of snapshot %s: %w", c.snapshot, err)
		}
		// The streamed fill became the node cache entry: the same 4 again, all cached.
		if c.concurrentCached, err = concurrentRestores(ctx, l, prefix+"-cached", streaming, command, c.snapshot, c.pagesStored, 4); err != nil {
			return nil, fmt.Errorf("concurrent cached restores of snapshot %s: %w", c.snapshot, err)
		}
		if c.concurrentCached.streamed > 0 {
			return nil, fmt.Errorf("concurrent restores of snapshot %s after the streamed ones: %d of 4 did not find it in the node cache", c.snapshot, c.concurrentCached.streamed)
		}
	}

	// Delete the snapshot, so the next cycle's cold start is cold, and the node cache's
	// entries, so the disk does not fill up.
	if _, err := l.CLI(ctx, "rm", "-n", l.Namespace, c.snapshot); err != nil {
		return nil, err
	}
	if err := emptyNodeCache(l); err != nil {
		return nil, err
	}
	return c, nil
}

// benchConfigs are the shim configs a cycle's restores use beside the lab's own.
type benchConfigs struct {
	whole    string // stream_restore = false
	buffered string // restore_direct = false
}

// shimOptions are the `ctr run` options of a container on our shim with config cfg.
func shimOptions(cfg string, labels []string) []string {
	opts := []string{"--runtime", lab.RuntimeType, "--runtime-config-path", cfg}
	for _, lb := range labels {
		opts = append(opts, "--label", lb)
	}
	return opts
}

// restoreOnce starts a container that restores snapshot uuid (ctr run options opts) and
// waits until its workload has read back all its memory and, when its pages streamed,
// until its shim has fetched them all and says so; then it reads the shim's peak RSS,
// which so covers the whole download, and removes the container.
func restoreOnce(ctx context.Context, l *lab.Lab, id string, opts, command []string, uuid string, rr *restoreRun) error {
	from := len(l.Log().Lines())
	cpu0, cpuErr := hostCPU()
	t, err := l.RunWith(ctx, id, opts, command...)
	if err != nil {
		return err
	}
	rr.ctrRun = t.Returned.Sub(t.Invoked)
	back, err := l.WaitOutput(ctx, t, 5*time.Minute, `"checkpoint result" line`, func(s string) bool { return strings.HasPrefix(s, "checkpoint result: ") })
	if err != nil {
		return err
	}
	_, d, _ := l.ShimLine(ctx, 10*time.Second, id, "decision=")
	rr.decision = d.Msg
	if !strings.HasSuffix(back.Text, ": restore") {
		return fmt.Errorf("the workload read %q: it started cold; the shim said: %s", back.Text, d.Msg)
	}
	rr.toReady = back.Seen.Sub(t.Invoked)
	rr.streamed = streamedDecision(d.Msg)
	mem, err := l.WaitOutput(ctx, t, 5*time.Minute, "memory check", func(s string) bool { return strings.HasPrefix(s, "memory ") })
	if err != nil {
		return err
	}
	if mem.Text != "memory ok" {
		return fmt.Errorf("restored memory: %s", mem.Text)
	}
	rr.toMemOK = mem.Seen.Sub(t.Invoked)
	if cpu1, err := hostCPU(); err == nil && cpuErr == nil {
		rr.cpuBusy = cpu1.busySince(cpu0)
	}
	line, _, err := l.ShimLine(ctx, 30*time.Second, id, "podsnapshot: restored")
	if err != nil {
		return err
	}
	m := restoredRE.FindStringSubmatch(lab.ParseLogEntry(line.Text).Msg)
	if m == nil {
		return fmt.Errorf("cannot read the timings of the shim's line: %s", line.Text)
	}
	rr.downloadMs, _ = strconv.ParseInt(m[2], 10, 64)
	rr.runscMs, _ = strconv.ParseInt(m[3], 10, 64)
	if rr.streamed {
		lines, err := waitFetched(ctx, l, from, 1, uuid)
		if err != nil {
			return err
		}
		e := lab.ParseLogEntry(lines[0])
		rr.fetchedBytes, rr.streamMs, rr.syncMs = e.Int("fetched_bytes"), e.Int("ms"), e.Int("sync_ms")
	}
	rr.shimPeak = shimPeak(id)
	return l.Remove(ctx, id)
}

// shimPeak returns the VmHWM of the shim serving container id, or -1.
func shimPeak(id string) int64 {
	p, err := lab.ShimProcess(id)
	if err != nil {
		logf("peak RSS: %v", err)
		return -1
	}
	m, err := lab.ReadMemory(p.PID)
	if err != nil {
		logf("peak RSS: %v", err)
		return -1
	}
	return m.Peak
}

// shimCPU returns the CPU time of the shim serving container id so far, or -1.
func shimCPU(id string) time.Duration {
	p, err := lab.ShimProcess(id)
	if err != nil {
		return -1
	}
	d, err := lab.ReadCPU(p.PID)
	if err != nil {
		return -1
	}
	return d
}

// plainShim times `ctr run` of a container without policy that prints "ready" and exits,
// through the shim, until that line is seen.
func plainShim(ctx context.Context, l *lab.Lab, n int) (time.Duration, error) {
	id := fmt.Sprintf("plain-%d", n)
	t, err := l.Run(ctx, id, nil, "echo", "ready")
	if err != nil {
		return 0, err
	}
	return plainReady(ctx, l, t, true)
}

// plainRuncShim is plainShim through containerd's own runc shim
// (io.containerd.runc.v2) driving the same runsc binary: what containerd, ctr and a
// standard shim cost, the reference for what our shim adds.
func plainRuncShim(ctx context.Context, l *lab.Lab, n int) (time.Duration, error) {
	id := fmt.Sprintf("plain-runc-%d", n)
	t, err := l.RunWith(ctx, id, []string{"--runtime", "io.containerd.runc.v2", "--runc-binary", filepath.Join(l.DepsBin, "runsc")}, "echo", "ready")
	if err != nil {
		return 0, err
	}
	return plainReady(ctx, l, t, false)
}

// plainReady waits for the plain task's "ready" line and its exit, removes it and
// returns the time from `ctr run` to the line. ours: the task runs on our shim, whose
// decision line must not be a restore.
func plainReady(ctx context.Context, l *lab.Lab, t *lab.Task, ours bool) (time.Duration, error) {
	id := t.ID
	line, err := t.Output.Wait(ctx, time.Minute, `"ready" line`, func(s string) bool { return s == "ready" })
	if err != nil {
		return 0, err
	}
	if _, d, _ := l.ShimLine(ctx, time.Second, id, "decision="); ours && strings.Contains(d.Msg, "restore") {
		return 0, fmt.Errorf("plain container: the shim said %s", d.Msg)
	}
	// Let the task's exit be recorded before removing it: the echo is over by now.
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, err := l.TaskStatus(ctx, id)
		if err != nil {
			return 0, err
		}
		if status == "STOPPED" || status == "absent" {
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("plain container %s still %s 30s after its output", id, status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return line.Seen.Sub(t.Invoked), l.Remove(ctx, id)
}

func slowinitCommand(mib int, seconds float64) []string {
	return []string{"slowinit", "-mib", strconv.Itoa(mib), "-seconds", strconv.FormatFloat(seconds, 'f', -1, 64), "-checkpoint"}
}

// cpuTimes are the host's CPU jiffies so far, all cores together (/proc/stat's cpu line).
type cpuTimes struct{ busy, total int64 }

// hostCPU reads /proc/stat's first line: busy is everything but idle and iowait.
func hostCPU() (cpuTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return cpuTimes{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var c cpuTimes
	for i, s := range f[1:] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("/proc/stat: %q: %w", line, err)
		}
		c.total += v
		if i != 3 && i != 4 { // idle, iowait
			c.busy += v
		}
	}
	return c, nil
}

// busySince is the busy fraction of the CPU time between before and c.
func (c cpuTimes) busySince(before cpuTimes) float64 {
	if c.total <= before.total {
		return 0
	}
	return float64(c.busy-before.busy) / float64(c.total-before.total)
}

// triggerToCommitted is the time from the workload's trigger to the shim's committed
// line: the workload's "ready <time>" (written just before it triggers) and the log
// line's time= are both the host's clock, free of polling delay; else the lines'
// arrival times.
func triggerToCommitted(ready, committed lab.Line, entry lab.LogEntry) time.Duration {
	d := committed.Seen.Sub(ready.Seen)
	if trig, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(ready.Text, "ready ")); err == nil && !entry.Time.IsZero() {
		if t := entry.Time.Sub(trig); t > 0 {
			d = t
		}
	}
	return d
}

// coldReady waits up to timeout for the "ready" line of cold-started task cold; an error
// carries the shim's decision line.
func coldReady(ctx context.Context, l *lab.Lab, cold *lab.Task, timeout time.Duration) (lab.Line, error) {
	ready, err := l.WaitOutput(ctx, cold, timeout, `"ready" line`, func(s string) bool { return strings.HasPrefix(s, "ready ") })
	if err != nil {
		_, d, _ := l.ShimLine(ctx, time.Second, cold.ID, "decision=")
		return lab.Line{}, fmt.Errorf("cold start: %w (shim: %s)", err, d.Msg)
	}
	return ready, nil
}

// awaitCommit waits for task cold's workload to read "resume" from its checkpoint
// trigger, then for the shim's committed line of it, and returns that line.
func awaitCommit(ctx context.Context, l *lab.Lab, cold *lab.Task) (lab.Line, lab.LogEntry, error) {
	res, err := l.WaitOutput(ctx, cold, 10*time.Minute, `"checkpoint result" line`, func(s string) bool { return strings.HasPrefix(s, "checkpoint result: ") })
	if err != nil {
		return lab.Line{}, lab.LogEntry{}, fmt.Errorf("checkpoint: %w", err)
	}
	if !strings.HasSuffix(res.Text, ": resume") {
		return lab.Line{}, lab.LogEntry{}, fmt.Errorf("checkpoint: the workload read %q, want resume", res.Text)
	}
	committed, entry, err := l.ShimLine(ctx, 10*time.Minute, cold.ID, "podsnapshot: committed")
	if err != nil {
		return lab.Line{}, lab.LogEntry{}, fmt.Errorf("checkpoint: %w", err)
	}
	return committed, entry, nil
}
