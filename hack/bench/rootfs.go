package main

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
)

// The rootfs-only section (issue 17): a workload whose expensive start leaves its
// result in the root file system, under a policy with snapshotScope: rootfs-only. Its
// snapshot holds the container's root file system changes (gVisor's rootfs overlay
// upper layer, `runsc tar rootfs-upper`) and no memory; a new container of the same
// spec starts its processes afresh on those files.
const (
	// rootfsMiB and rootfsSeconds size fsinit as the issue does: 500 MiB of files
	// written over 10 s.
	rootfsMiB     = 500
	rootfsSeconds = 10
	// rootfsPolicy is the bench's rootfs-only PodSnapshotPolicy, selected by
	// rootfsLabel; it uses the lab's storage config ("store") like the lab's own policy.
	rootfsPolicy = "rootfs-bench"
	rootfsLabel  = "app=" + rootfsPolicy
)

// rootfsCommand is the workload of the section.
func rootfsCommand() []string {
	return []string{"fsinit", "-dir", "/data", "-mib", strconv.Itoa(rootfsMiB), "-seconds", strconv.Itoa(rootfsSeconds), "-checkpoint"}
}

// rootfsRun is one cycle of fsinit under the rootfs-only policy: a cold start that
// writes the files and triggers, its snapshot, and two restores of it, each to "ready".
type rootfsRun struct {
	coldToReady        time.Duration // ctr run invoked -> "ready" of the first run (set-up done)
	triggerToCommitted time.Duration // its "ready <time>" (it triggers right after) -> the shim's committed line
	uploadMs           int64         // upload_ms of the committed line
	rawBytes           int64         // the layers' raw and stored bytes (the manifest's files)
	storedBytes        int64
	layers             int // layer files in the manifest
	snapshot           string
	first, cached      rootfsRestore
}

// rootfsRestore is one start of the same spec on the snapshot's layer.
type rootfsRestore struct {
	toReady time.Duration // ctr run invoked -> "ready" (files checked)
	// The shim's restored line: download (or node cache lookup) and the layer's part.
	downloadMs, layerMs int64
	fromCache           bool   // the shim found the snapshot in the node cache
	trigger             string // what the restored workload's own trigger read ("" when not seen)
}

// rootfsPolicyYAML is the policy of the section: the lab's, with snapshotScope
// rootfs-only and its own name and selector.
func rootfsPolicyYAML(namespace string) string {
	return `apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotPolicy
metadata:
  name: ` + rootfsPolicy + `
  namespace: ` + namespace + `
spec:
  storageConfigName: store
  selector:
    matchLabels:
      app: ` + rootfsPolicy + `
  snapshotScope: rootfs-only
  triggerConfig:
    type: workload
    postCheckpoint: resume
`
}

// measureRootfs runs the rootfs-only cycle -runs times in lab l (its store) and records
// the figures under the store's keys.
func measureRootfs(ctx context.Context, rep *report, l *lab.Lab) error {
	if err := l.WritePolicy("rootfs-policy.yaml", rootfsPolicyYAML(l.Namespace)); err != nil {
		return err
	}
	res, s := rep.res, string(l.Storage)
	for r := 0; r < rep.cfg.runs; r++ {
		rep.sampleLoad()
		logf("%s, rootfs-only, run %d/%d: fsinit %d MiB over %d s: cold start, snapshot, restores: first, cached", l.Storage, r+1, rep.cfg.runs, rootfsMiB, rootfsSeconds)
		c, err := rootfsCycle(ctx, l, fmt.Sprintf("rootfs-%s-%d", l.Storage, r))
		if err != nil {
			return fmt.Errorf("%s, rootfs-only, run %d: %w", l.Storage, r+1, err)
		}
		res.add("rootfs_cold_"+s, 0, c.coldToReady.Seconds())
		res.add("rootfs_restore_first_"+s, 0, c.first.toReady.Seconds())
		res.add("rootfs_restore_cached_"+s, 0, c.cached.toReady.Seconds())
		res.add("rootfs_ratio_first_"+s, 0, c.coldToReady.Seconds()/c.first.toReady.Seconds())
		res.add("rootfs_ratio_cached_"+s, 0, c.coldToReady.Seconds()/c.cached.toReady.Seconds())
		res.add("rootfs_download_first_"+s, 0, float64(c.first.downloadMs)/1e3)
		res.add("rootfs_layer_first_"+s, 0, float64(c.first.layerMs)/1e3)
		res.add("rootfs_commit_"+s, 0, c.triggerToCommitted.Seconds())
		res.add("rootfs_upload_"+s, 0, float64(c.uploadMs)/1e3)
		res.add("rootfs_raw_mb_"+s, 0, float64(c.rawBytes)/1e6)
		res.add("rootfs_stored_mb_"+s, 0, float64(c.storedBytes)/1e6)
		for _, rr := range []rootfsRestore{c.first, c.cached} {
			if rr.trigger != "" && rr.trigger != "unavailable" {
				rep.note(fmt.Sprintf("rootfs-only: a restored fsinit (started fresh, -checkpoint) triggered again and read `checkpoint result: %s`; the bench removes it once it is ready", rr.trigger))
			}
		}
		logf("  cold %.2fs, committed %.2fs after trigger (upload %d ms), %d layer(s) %.1f/%.1f MB raw/stored; restore %.2fs (%.1fx; download %d ms, layer %d ms), cached %.2fs (%.1fx; download %d ms, layer %d ms); the restored workloads' own trigger read %q, %q",
			c.coldToReady.Seconds(), c.triggerToCommitted.Seconds(), c.uploadMs, c.layers, float64(c.rawBytes)/1e6, float64(c.storedBytes)/1e6,
			c.first.toReady.Seconds(), c.coldToReady.Seconds()/c.first.toReady.Seconds(), c.first.downloadMs, c.first.layerMs,
			c.cached.toReady.Seconds(), c.coldToReady.Seconds()/c.cached.toReady.Seconds(), c.cached.downloadMs, c.cached.layerMs,
			c.first.trigger, c.cached.trigger)
	}
	return nil
}

// rootfsCycle cold-starts fsinit under the rootfs-only policy, waits for its snapshot,
// then starts the same spec twice on it: with the node cache empty (from the store),
// and again (from the node cache). Each restore must find its files ("files ok") and
// not run the set-up. Then it deletes the snapshot and empties the node cache.
func rootfsCycle(ctx context.Context, l *lab.Lab, prefix string) (*rootfsRun, error) {
	command, labels := rootfsCommand(), []string{rootfsLabel}
	coldID := prefix + "-cold"
	c := &rootfsRun{}

	cold, err := l.Run(ctx, coldID, labels, command...)
	if err != nil {
		return nil, fmt.Errorf("cold start: %w", err)
	}
	ready, err := coldReady(ctx, l, cold, rootfsSeconds*time.Second+3*time.Minute)
	if err != nil {
		return nil, err
	}
	c.coldToReady = ready.Seen.Sub(cold.Invoked)
	if out := outputLines(cold.Output); !slices.Contains(out, "setup done") {
		_, d, _ := l.ShimLine(ctx, time.Second, coldID, "decision=")
		return nil, fmt.Errorf("cold start: no `setup done` before ready (a snapshot left over?): output %q; shim: %s", out, d.Msg)
	}
	committed, entry, err := awaitCommit(ctx, l, cold)
	if err != nil {
		return nil, err
	}
	c.snapshot, c.uploadMs = entry.Fields["snapshot"], entry.Int("upload_ms")
	if c.snapshot == "" {
		return nil, fmt.Errorf("checkpoint: no snapshot in the shim's line: %s", committed.Text)
	}
	c.triggerToCommitted = triggerToCommitted(ready, committed, entry)
	if err := l.Remove(ctx, coldID); err != nil {
		return nil, err
	}
	m, err := readManifest(ctx, l, c.snapshot)
	if err != nil {
		return nil, err
	}
	if m.ScopeName() != manifest.ScopeRootfsOnly {
		return nil, fmt.Errorf("snapshot %s has scope %s, want %s", c.snapshot, m.ScopeName(), manifest.ScopeRootfsOnly)
	}
	for _, f := range m.RootfsLayers() {
		c.layers++
		c.rawBytes += f.RawSize
		c.storedBytes += f.StoredSize
	}
	if c.layers == 0 || c.storedBytes <= 0 {
		return nil, fmt.Errorf("snapshot %s: no root file system layer among its %d files", c.snapshot, len(m.Files))
	}

	if err := emptyNodeCache(l); err != nil {
		return nil, err
	}
	for i, rr := range []*rootfsRestore{&c.first, &c.cached} {
		id := fmt.Sprintf("%s-restore%d", prefix, i+1)
		if err := rootfsRestoreOnce(ctx, l, id, command, rr); err != nil {
			return nil, fmt.Errorf("restore %d of snapshot %s: %w", i+1, c.snapshot, err)
		}
	}
	if c.first.fromCache {
		return nil, fmt.Errorf("first restore of %s came from the node cache, which was emptied", c.snapshot)
	}
	if !c.cached.fromCache {
		return nil, fmt.Errorf("second restore of %s did not come from the node cache", c.snapshot)
	}

	if _, err := l.CLI(ctx, "rm", "-n", l.Namespace, c.snapshot); err != nil {
		return nil, err
	}
	return c, emptyNodeCache(l)
}

var rootfsRestoredRE = regexp.MustCompile(`\(download (\d+) ms, layer (\d+) ms\)`)

// rootfsRestoreOnce starts the spec again as container id, waits for "ready", checks
// that the workload found its files (and did not set up again) and that the shim
// restored the root file system, reads the shim's timings and removes the container.
func rootfsRestoreOnce(ctx context.Context, l *lab.Lab, id string, command []string, rr *rootfsRestore) error {
	from := len(l.Log().Lines())
	t, err := l.Run(ctx, id, []string{rootfsLabel}, command...)
	if err != nil {
		return err
	}
	ready, err := l.WaitOutput(ctx, t, rootfsSeconds*time.Second+3*time.Minute, `"ready" line`, func(s string) bool { return strings.HasPrefix(s, "ready ") })
	if err != nil {
		return fmt.Errorf("%w; the shim said: %s", err, shimSaid(l, from, id))
	}
	rr.toReady = ready.Seen.Sub(t.Invoked)
	out := outputLines(t.Output)
	if slices.Contains(out, "setup done") || !slices.Contains(out, "files ok") {
		return fmt.Errorf("the workload did not find its files: output %q; the shim said: %s", out, shimSaid(l, from, id))
	}
	for _, want := range []string{"deleted ok", "modified ok", "dir ok"} {
		if !slices.Contains(out, want) {
			return fmt.Errorf("the workload's root file system came back incomplete: no %q in %q", want, out)
		}
	}
	line, e, err := l.ShimLine(ctx, 10*time.Second, id, "decision=restored")
	if err != nil {
		return fmt.Errorf("%w; the shim said: %s", err, shimSaid(l, from, id))
	}
	if e.Fields["scope"] != manifest.ScopeRootfsOnly {
		return fmt.Errorf("the shim's restored line has scope %q, want %s: %s", e.Fields["scope"], manifest.ScopeRootfsOnly, line.Text)
	}
	sm := rootfsRestoredRE.FindStringSubmatch(e.Msg)
	if sm == nil {
		return fmt.Errorf("cannot read the timings of the shim's line: %s", line.Text)
	}
	rr.downloadMs, _ = strconv.ParseInt(sm[1], 10, 64)
	rr.layerMs, _ = strconv.ParseInt(sm[2], 10, 64)
	for _, ln := range l.Log().Lines()[from:] {
		if strings.Contains(ln.Text, " id="+id+" ") && strings.Contains(ln.Text, "found in the node cache") {
			rr.fromCache = true
		}
	}
	// The restored workload is a fresh fsinit: with -checkpoint it writes to the trigger
	// file again. Note what it read, without waiting long for it.
	if back, err := t.Output.Wait(ctx, 5*time.Second, `"checkpoint result" line`, func(s string) bool { return strings.HasPrefix(s, "checkpoint result: ") }); err == nil {
		rr.trigger = strings.TrimPrefix(back.Text, "checkpoint result: ")
	}
	return l.Remove(ctx, id)
}

// outputLines returns the lines of a task's output so far.
func outputLines(t *lab.Tail) []string {
	var out []string
	for _, ln := range t.Lines() {
		out = append(out, ln.Text)
	}
	return out
}

// shimSaid returns the shim's podsnapshot lines about container id since log line from,
// for an error.
func shimSaid(l *lab.Lab, from int, id string) string {
	var msgs []string
	lines := l.Log().Lines()
	for _, ln := range lines[min(from, len(lines)):] {
		if strings.Contains(ln.Text, " id="+id+" ") && strings.Contains(ln.Text, "podsnapshot") {
			msgs = append(msgs, ln.Text)
		}
	}
	if len(msgs) == 0 {
		return "(nothing about " + id + ")"
	}
	return strings.Join(msgs, "\n")
}

// readManifest reads snapshot uuid's manifest (podsnapshot inspect: the PodSnapshot
// view, then the manifest).
func readManifest(ctx context.Context, l *lab.Lab, uuid string) (*manifest.Manifest, error) {
	out, err := l.CLI(ctx, "inspect", "-n", l.Namespace, uuid)
	if err != nil {
		return nil, err
	}
	docs := strings.Split(out, "\n---\n")
	var m manifest.Manifest
	if err := yaml.Unmarshal([]byte(docs[len(docs)-1]), &m); err != nil {
		return nil, fmt.Errorf("manifest of %s: %w", uuid, err)
	}
	return &m, nil
}

// defineRootfsMetrics declares the section's rows, per store.
func defineRootfsMetrics(r *Results, stores []lab.Storage) {
	for _, st := range stores {
		s, name := string(st), storeName(st)
		r.define("rootfs_cold_"+s, "rootfs-only: cold start to ready, "+name, "s",
			fmt.Sprintf("`fsinit -dir /data -mib %d -seconds %d -checkpoint` under a PodSnapshotPolicy with snapshotScope: rootfs-only: ctr run invoked -> its `ready` line (after `setup done`: %d MiB of files written over %d s, image files changed)",
				rootfsMiB, rootfsSeconds, rootfsMiB, rootfsSeconds))
		r.define("rootfs_restore_first_"+s, "rootfs-only: restore to ready, "+name+", first (node cache empty)", "s",
			"the same spec again after the cold one was removed: lookup and download of the layer, runsc create with it applied to the root file system, fsinit started fresh: ctr run invoked -> its `ready` line, "+
				"after it printed `files ok` (every file read back and checked), `deleted ok`, `modified ok`, `dir ok` and `setup skipped` (a row is an error otherwise)")
		r.define("rootfs_restore_cached_"+s, "rootfs-only: restore to ready, "+name+", second (node cache)", "s",
			"the same again, the layer found in the node cache")
		r.define("rootfs_ratio_first_"+s, "rootfs-only: cold start / restore to ready, "+name+", first", "x", "per run")
		r.define("rootfs_ratio_cached_"+s, "rootfs-only: cold start / restore to ready, "+name+", cached", "x", "per run")
		r.define("rootfs_download_first_"+s, "  shim: lookup + download, first restore, "+name, "s",
			"the download part of the shim's `restored` line (it runs alongside runsc create)")
		r.define("rootfs_layer_first_"+s, "  shim: applying the layer, first restore, "+name, "s",
			"the layer part of the shim's `restored` line: the sandbox created again with the layer named in its spec")
		r.define("rootfs_commit_"+s, "rootfs-only: trigger -> committed, "+name, "s",
			"the workload's `ready <time>` (it triggers right after) -> the shim's `committed` log time: gVisor's save (its memory image discarded), the sandbox frozen while `runsc tar rootfs-upper` writes the layer, compress + upload + manifest")
		r.define("rootfs_upload_"+s, "  shim: compress + upload + verify + manifest, "+name, "s", "upload_ms of the shim's `committed` line")
		r.define("rootfs_raw_mb_"+s, "rootfs-only: layer size, raw, "+name, "MB", "the root file system layer files of the manifest (a tar archive per container), uncompressed")
		r.define("rootfs_stored_mb_"+s, "rootfs-only: layer size, stored, "+name, "MB", "the same files as stored")
	}
}

// rootfsRows are the section's rows, in table order, without the store suffix.
var rootfsRows = []string{
	"rootfs_cold_", "rootfs_restore_first_", "rootfs_restore_cached_", "rootfs_ratio_first_", "rootfs_ratio_cached_",
	"rootfs_download_first_", "rootfs_layer_first_", "rootfs_commit_", "rootfs_upload_", "rootfs_raw_mb_", "rootfs_stored_mb_",
}

// rootfsMeasured reports whether the run measured the section in any store.
func rootfsMeasured(rep *report) bool {
	for _, st := range rep.cfg.stores {
		if _, ok := rep.res.stat("rootfs_cold_"+string(st), 0); ok {
			return true
		}
	}
	return false
}

// renderRootfs writes the section's table: a row per figure, a column per store.
func renderRootfs(rep *report, w func(string, ...any)) {
	r := rep.res
	w("\n## Root file system only (snapshotScope: rootfs-only)\n\n")
	w("`fsinit -dir /data -mib %d -seconds %d -checkpoint` (the workloads test image) under a policy with snapshotScope: rootfs-only: the snapshot holds the container's root file system changes, not its memory; "+
		"a restore starts the workload fresh on them, and it finds its files instead of writing them.\n\n", rootfsMiB, rootfsSeconds)
	w("| measurement |")
	for _, st := range rep.cfg.stores {
		w(" %s |", storeName(st))
	}
	w(" unit |\n|---|")
	for range rep.cfg.stores {
		w("---|")
	}
	w("---|\n")
	for _, k := range rootfsRows {
		m := r.metrics[k+string(rep.cfg.stores[0])]
		label := strings.TrimSuffix(m.Label, ", "+storeName(rep.cfg.stores[0]))
		label = strings.Replace(label, ", "+storeName(rep.cfg.stores[0])+",", ",", 1)
		w("| %s |", mdLabel(label))
		for _, st := range rep.cfg.stores {
			stt, ok := r.stat(k+string(st), 0)
			w(" %s |", cell(stt, ok, m.Unit))
		}
		w(" %s |\n", m.Unit)
	}
}

// rootfsTarget is issue 17's must-show: the ratio, reported (the issue sets no number).
func rootfsTarget(rep *report) target {
	r := rep.res
	t := target{Target: fmt.Sprintf("rootfs-only: cold start to ready / restore to ready for a workload whose set-up writes %d MiB of files over %d s (issue 17; no number set: reported)", rootfsMiB, rootfsSeconds)}
	if !rep.cfg.rootfs {
		t.Holds = "not measured (-rootfs=false)"
		return t
	}
	var parts []string
	for _, st := range rep.cfg.stores {
		s := string(st)
		cold, ok1 := median(r, "rootfs_cold_"+s, 0)
		first, ok2 := median(r, "rootfs_restore_first_"+s, 0)
		cached, ok3 := median(r, "rootfs_restore_cached_"+s, 0)
		rf, _ := median(r, "rootfs_ratio_first_"+s, 0)
		rc, _ := median(r, "rootfs_ratio_cached_"+s, 0)
		if !ok1 || !ok2 || !ok3 {
			continue
		}
		p := fmt.Sprintf("%s: cold %.2f s, restore %.2f s first = %.1fx, %.2f s cached = %.1fx (medians of the per-run ratios)", storeName(st), cold, first, rf, cached, rc)
		if stored, ok := median(r, "rootfs_stored_mb_"+s, 0); ok {
			commit, _ := median(r, "rootfs_commit_"+s, 0)
			p += fmt.Sprintf("; layer %.0f MB stored, committed %.2f s after the trigger", stored, commit)
		}
		parts = append(parts, p)
	}
	t.Measured = strings.Join(parts, "; ")
	t.Holds = "reported"
	if len(parts) == 0 {
		t.Holds = "not measured"
	}
	return t
}
