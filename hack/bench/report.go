package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/podsnap"
	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
	"github.com/podsnapshot/podsnapshot/storage"
)

func storeName(s lab.Storage) string {
	switch s {
	case lab.GCS:
		return "fake-gcs-server"
	case lab.GCSShaped:
		return "shaped Cloud Storage"
	}
	return "local store"
}

func defineMetrics(r *Results, stores []lab.Storage) {
	r.define("cold", "cold start to ready, through the shim", "s",
		"ctr run invoked -> the workload's `ready` line seen in its log file; the cold starts of every store's lab pooled")
	for _, st := range stores {
		s, name := string(st), storeName(st)
		how := "ctr run invoked -> `checkpoint result: restore` seen; stream_restore = true (the default): lookup, download and verify of checkpoint.img and pages_meta.img and the FUSE mount alongside runsc create, " +
			"then runsc restore --background from the mount while pages.img arrives frame by frame into the node cache (frames the sandbox reads first are fetched first)"
		if !st.OnGCS() {
			how = "ctr run invoked -> `checkpoint result: restore` seen; stream_restore = true (the default): the local store's uncompressed pages.img, just written and so in the page cache, is hard-linked into the node cache, verified whole " +
				"(every frame's CRC32C, one reader per CPU) and published alongside runsc create, then runsc restore --background --direct from that entry, as a cached restore (stream.adoptLinked); an object mostly out of memory would stream instead"
		}
		r.define("restore_first_"+s, "restore to ready, "+name+", first (node cache empty)", "s", how)
		r.define("restore_cached_"+s, "restore to ready, "+name+", second (node cache)", "s",
			"the same snapshot again: the first restore's streamed image became a node cache entry (it was published before the first restore was removed)")
		r.define("restore_cached_buffered_"+s, "restore to ready, "+name+", second (node cache), restore_direct = false", "s",
			"the same cached restore again through a shim config with restore_direct = false: runsc restore without --direct, gVisor's loader reading the entry's pages.img through the page cache, where its pages are (written there by the first restore's fill, or by the commit for an adopted local-store file; --direct reads leave none there): a warm entry; the default is --direct, which reads the disk either way")
		r.define("restore_whole_"+s, "restore to ready, "+name+", first, stream_restore = false (whole download)", "s",
			"the node cache emptied again, a second shim config with stream_restore = false (the old path): lookup, download of the whole snapshot (files stored uncompressed: a hard link from a local store), "+
				"verify, decompress into the node cache alongside runsc create, then runsc restore --background; for comparison")
	}
	for _, st := range stores {
		if !st.OnGCS() {
			continue
		}
		s, name := string(st), storeName(st)
		r.define("restore_conc_"+s, "4 restores at once of one snapshot on one node, "+name+" (node cache empty): each to ready, median of the 4", "s",
			"after the restores above, the node cache emptied, 4 `ctr run`s of the same restore (default config: streaming) started together; each: its ctr run invoked -> its `checkpoint result: restore` seen; the median of the 4 in each run")
		r.define("restore_conc_max_"+s, "  4 at once: the slowest of the 4, "+name, "s", "the largest of the 4 in each run")
		r.define("restore_conc_cached_max_"+s, "  4 at once from the node cache: the slowest of the 4, "+name, "s",
			"after the 4 above, their streamed snapshot in the node cache: the same 4 `ctr run`s again, none downloading; what 4 sandboxes restoring together cost on this machine, the scale for the row above")
		r.define("downloads_conc_"+s, "  4 at once: downloads of pages.img by the 4 shims together, "+name, "x",
			"the sum of fetched_bytes (stored bytes a shim downloaded) over the 4 shims' `frames fetched by this shim` lines / the stored size of the pages file (its manifest, `podsnapshot inspect`): 1.00 is one download shared by all 4")
	}
	r.define("raw_restore", "raw `runsc create` + `runsc restore --background` (the floor)", "s",
		"no containerd, no shim, the shim's runsc flags: uncompressed image runsc wrote itself, read once beforehand so it is in the page cache; invoked -> `checkpoint result: restore` seen")
	r.define("raw_restore_fg", "raw `runsc create` + `runsc restore` without --background", "s",
		"as the floor, pages loaded before the workload resumes: for reference")
	r.define("raw_cold", "raw `runsc run` cold start to ready (no shim; one run)", "s", "")
	for _, st := range stores {
		s, name := string(st), storeName(st)
		what, how := "lookup + checkpoint.img and pages_meta.img + mount", "the download part of the shim's `restored` line, first (streaming) restore: lookup, download and verify of the files but pages.img, FUSE mount; it runs alongside runsc create, so the parts do not add up to the total"
		if !st.OnGCS() {
			what, how = "lookup + link and verify of every file", "the download part of the shim's `restored` line, first restore: lookup, the files linked into the node cache and verified whole (pages.img in memory), published; it runs alongside runsc create, so the parts do not add up to the total"
		}
		r.define("restore_first_download_"+s, "  shim: "+what+", "+name+", first", "s", how)
		r.define("restore_first_runsc_"+s, "  shim: runsc restore, "+name+", first", "s", "the shim's own log line: `runsc restore --background` until it returns")
		r.define("restore_first_stream_"+s, "  shim: pages.img streamed in full and verified, "+name+", first", "s",
			"ms of the shim's `frames fetched by this shim` line: from the start of the stream (after the small files) until every frame arrived, the whole file was verified and became the node cache entry; most of it after runsc restore returned, while the workload runs")
		r.define("restore_first_sync_"+s, "  shim: of which fsync of the node cache entry before it is published, "+name+", first", "s",
			"sync_ms of the same line: the complete fill's files, marker and directory fsynced before the rename that makes it the node cache entry (a restore trusts an entry without reading it again, so a power loss must not leave one holding zeros); after the pod resumed, while it runs")
		r.define("restore_cached_runsc_"+s, "  shim: runsc restore, "+name+", cached", "s", "the shim's own log line")
		r.define("restore_whole_download_"+s, "  shim: lookup + download + verify + decompress, "+name+", stream_restore = false", "s",
			"the download part of the shim's `restored` line, whole-download restore; it runs alongside runsc create")
	}
	for _, st := range stores {
		s, name := string(st), storeName(st)
		r.define("restore_first_memok_"+s, "first restore to `memory ok`, "+name, "s", "ctr run invoked -> the restored workload has read all its memory back (streaming: every page it reads has arrived)")
		r.define("restore_cached_memok_"+s, "cached restore to `memory ok`, "+name, "s", "the second restore (node cache), to `memory ok`")
		r.define("restore_cached_buffered_memok_"+s, "cached restore to `memory ok`, "+name+", restore_direct = false", "s", "the cached restore without --direct, to `memory ok`")
		r.define("restore_whole_memok_"+s, "first restore to `memory ok`, "+name+", stream_restore = false", "s", "the whole-download restore, to `memory ok`")
		r.define("cpu_busy_first_"+s, "  host CPU busy, first restore to `memory ok`, "+name, "%",
			"/proc/stat: busy time (all but idle and iowait) / all CPU time of every core, from ctr run to `memory ok`: near 100% the restore waited for CPU, not for bytes")
		r.define("cpu_busy_cached_"+s, "  host CPU busy, cached restore to `memory ok`, "+name, "%", "as above, the cached restore")
		r.define("cpu_busy_whole_"+s, "  host CPU busy, first restore to `memory ok`, "+name+", stream_restore = false", "%", "as above, the whole-download restore")
	}
	if slices.Contains(stores, lab.GCS) {
		r.define("emulator_serve_s", "fake-gcs-server alone: time to serve the stored snapshot", "s",
			"the snapshot's stored bytes (the shim's `committed` line) / the rate of `fake-gcs-server alone: one download request` measured right before the same run: the emulator's own time to hand out those bytes, none of our code")
	}
	if slices.Contains(stores, lab.GCSShaped) {
		r.define("shaped_serve_s", "shaped Cloud Storage alone: time to serve the stored snapshot", "s",
			"the snapshot's stored bytes / the rate of `shaped Cloud Storage alone: parallel ranged reads` measured right before the same run: the shaped store's own time to hand out those bytes as the shim asks for them, none of our code")
	}
	r.define("raw_restore_memok", "raw runsc restore --background to `memory ok`", "s", "")
	r.define("raw_restore_fg_memok", "raw runsc restore without --background to `memory ok`", "s", "")
	for _, st := range stores {
		s, name := string(st), storeName(st)
		r.define("commit_"+s, "trigger -> committed, "+name, "s",
			"the workload's `ready <time>` (it triggers right after) -> the shim's `committed` log time: save + compress + upload + verify + manifest")
		r.define("upload_"+s, "  shim: compress + upload + verify + manifest, "+name, "s", "upload_ms of the shim's line")
		r.define("upload_alone_"+s, "  the upload part alone, no sandbox: repo.Commit of runsc's own image, "+name, "s",
			"the bench process commits the floor's uncompressed image (from the page cache) with the shim's codec, ratio threshold and part size, then deletes it")
	}
	for _, st := range stores {
		s, name := string(st), storeName(st)
		r.define("commit_mbps_"+s, "trigger -> committed throughput, "+name, "MB/s", "raw image bytes / (trigger -> committed)")
		r.define("upload_mbps_"+s, "  shim upload part throughput, "+name, "MB/s", "raw image bytes / upload_ms")
	}
	r.define("raw_save", "raw runsc checkpoint, no shim: trigger, save, resume (gVisor's part of trigger -> committed)", "s",
		"runsc run directly with the shim's checkpoint annotations: the workload's `ready` line (it triggers right after) -> its `checkpoint result: resume` line; runsc writes the uncompressed image into the page cache")
	r.define("raw_save_mbps", "  raw runsc checkpoint throughput", "MB/s", "raw image bytes / raw runsc checkpoint")
	if slices.Contains(stores, lab.GCS) {
		r.define("emulator_up_mbps", "fake-gcs-server alone: one upload request of the pages file", "MB/s",
			"HTTP POST uploadType=media of the floor's pages.img from the page cache, none of our code: the emulator's own speed for one request, a scale (the shim uploads parts in parallel and composes them)")
		r.define("emulator_down_mbps", "fake-gcs-server alone: one download request of it", "MB/s", "HTTP GET alt=media into io.Discard")
	}
	if slices.Contains(stores, lab.GCSShaped) {
		r.define("shaped_up_mbps", "shaped Cloud Storage alone: one upload request of the pages file", "MB/s",
			"as the fake-gcs-server row, through the shaped proxy (first-byte latency, per-connection and total bandwidth, -shape-*): one connection, so at most the per-connection rate")
		r.define("shaped_down_mbps", "shaped Cloud Storage alone: one download request of it", "MB/s", "HTTP GET alt=media through the proxy into io.Discard")
		r.define("shaped_par_down_mbps", "shaped Cloud Storage alone: parallel ranged reads of it, as the shim's stream reads", "MB/s",
			fmt.Sprintf("%d ranged GETs at once, each the next %d MiB of the file (%d frames of %d MiB: the shim's stream fetches %d reads of %d frames at a time), through the proxy into io.Discard",
				rangeWorkers, rangeBytes>>20, rangeFrames, storage.DefaultFrameSize>>20, rangeWorkers, rangeFrames))
	}
	r.define("zstd_mbps", "standalone zstd compressor (storage.Zstd defaults)", "MB/s",
		"in-process, the uncompressed image runsc wrote for the floor, from the page cache to io.Discard, right before each shim cycle")
	for _, st := range stores {
		s, name := string(st), storeName(st)
		r.define("upload_cpu_"+s, "shim CPU per GB raw, trigger -> committed, "+name, "CPU s/GB",
			"user+system time of the shim process (/proc/PID/stat) from `ready` to committed, per 10^9 raw bytes: independent of other load")
	}
	r.define("zstd_cpu", "standalone zstd CPU per GB raw", "CPU s/GB", "this process's user+system time while compressing")
	r.define("raw_mb", "snapshot size, raw", "MB", "the gVisor image files, uncompressed")
	r.define("raw_image_mb", "image size written by runsc directly", "MB", "the floor's uncompressed image (a cross-check of the raw size)")
	for _, st := range stores {
		r.define("stored_mb_"+string(st), "snapshot size, stored, "+storeName(st), "MB", fmt.Sprintf("zstd; a file whose sampled zstd ratio is below %.2f is stored as it is", podsnap.MinUploadRatio))
	}
	r.define("zstd_ratio", "compression ratio (standalone zstd)", "x", "")
	for _, st := range stores {
		s, name := string(st), storeName(st)
		r.define("rss_upload_"+s, "shim peak RSS during upload, "+name, "MiB", "VmHWM of the cold container's shim once committed")
		r.define("rss_download_"+s, "shim peak RSS during a streaming restore, "+name, "MiB",
			"VmHWM of the first restore's shim once its workload printed `memory ok` and its stream line said every frame had arrived: the download after runsc restore returned included (the local store's pages in memory do not stream: there, its verification of them)")
		r.define("rss_whole_"+s, "shim peak RSS during a whole-download restore (stream_restore = false), "+name, "MiB", "VmHWM of that restore's shim once its workload printed `memory ok`")
		r.define("rss_cached_"+s, "shim peak RSS, cached restore, "+name, "MiB", "VmHWM of the second restore's shim once its workload printed `memory ok`")
	}
	r.define("plain_shim", "`echo ready` through the shim (ctr run, no policy)", "s", "ctr run invoked -> `ready` seen in the log file")
	r.define("plain_runsc", "`echo ready` with `runsc run` directly", "s", "runsc run invoked -> `ready` seen in the output file")
	r.define("plain_runc_shim", "`echo ready` through containerd's runc shim driving runsc (ctr run --runtime io.containerd.runc.v2 --runc-binary runsc)", "s",
		"the same containerd, ctr, image and log file; the standard shim instead of ours: the reference for what our shim adds")
	r.define("plain_overhead", "shim overhead vs `runsc run`, per set of runs", "%", "(shim / runsc run) - 1: containerd, ctr and the shim together")
	r.define("plain_overhead_runc_shim", "shim overhead vs containerd's runc shim, per set of runs", "%", "(shim / runc shim) - 1: what our shim adds over the standard one")
	defineFloorMetrics(r)
	r.define("torch_cold", "torch: cold start to first inference", "s",
		"the model server (Debian's python3-torch, 16 Linear layers, 1 GiB of weights from a file in the image; local store): ctr run invoked -> its warm-up inference's line: import torch, load the weights, the first inference")
	r.define("torch_restore", "torch: restore to first inference", "s",
		"the same spec again, node cache empty, default config (streaming from the local store): ctr run invoked -> the first GET /infer answered (by `ctr task exec ... wget`, its ~0.1 s included), its output equal to the warm-up's before the checkpoint")
	r.define("torch_ratio", "torch: cold start / restore, to first inference", "x", "per run")
	r.define("torch_raw_mb", "torch: snapshot size, raw", "MB", "raw bytes of the shim's committed line, exclude_zero_pages = false (the default)")
	r.define("torch_stored_mb", "torch: snapshot size, stored", "MB", "stored bytes of the committed line, exclude_zero_pages = false")
	r.define("torch_raw_mb_zero", "torch: snapshot size, raw, exclude_zero_pages = true", "MB",
		"the same cycle with a shim config setting exclude_zero_pages = true (runsc's exclude-committed-zero-pages): pages of zeros left out of the image")
	r.define("torch_stored_mb_zero", "torch: snapshot size, stored, exclude_zero_pages = true", "MB", "")
	r.define("torch_compiled_cold", "torch compiled: cold start to first inference", "s",
		"the same image and model served compiled (torchserve.py --warmup=script: TorchScript trace, freeze, optimize_for_inference, then 3 inferences at each batch size it serves), as a real inference server warms up before it serves; Debian 12's torch 1.13 predates torch.compile; default config: ctr run invoked -> the warm-up inference's line, after the compile")
	r.define("torch_compiled_restore", "torch compiled: restore to first inference", "s",
		"as torch: restore to first inference, the compiled server's snapshot: the compiled model and its warm-up come back with it")
	r.define("torch_compiled_ratio", "torch compiled: cold start / restore, to first inference", "x", "per run")
}

func fmtValue(v float64, unit string) string {
	switch unit {
	case "s":
		if v < 10 {
			return strconv.FormatFloat(v, 'f', 3, 64)
		}
		return strconv.FormatFloat(v, 'f', 2, 64)
	case "MB/s", "MB", "MiB":
		if v < 100 {
			return strconv.FormatFloat(v, 'f', 1, 64)
		}
		return strconv.FormatFloat(v, 'f', 0, 64)
	case "x", "CPU s/GB":
		return strconv.FormatFloat(v, 'f', 2, 64)
	case "%":
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

func cell(st Stat, ok bool, unit string) string {
	if !ok {
		return "–"
	}
	if st.N == 1 {
		return fmtValue(st.Median, unit)
	}
	return fmt.Sprintf("%s (%s–%s)", fmtValue(st.Median, unit), fmtValue(st.Min, unit), fmtValue(st.Max, unit))
}

func sizeName(mib int) string {
	if mib >= 1024 && mib%1024 == 0 {
		return fmt.Sprintf("%d GiB", mib/1024)
	}
	return fmt.Sprintf("%d MiB", mib)
}

func renderMarkdown(rep *report) string {
	var b strings.Builder
	cfg, r := rep.cfg, rep.res
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# Benchmarks\n\n")
	if rep.outside.Void {
		w("> **VOID RUN**: processes outside the benchmark used %.0f%% of one core in user mode during it (more than %.0f%%): these figures measured a shared machine; do not compare them. %s.\n\n",
			100*rep.outside.UserShare, 100*voidShare, rep.outside)
	}
	w("Generated by `make bench` (hack/bench); do not edit by hand. Each cell is the median of the runs with (min–max); ")
	w("times in seconds from the moment the command was invoked until the line was seen in the output file, polled every 5 ms.\n\n")
	w("- date: %s (took %s)\n", rep.started.UTC().Format("2006-01-02 15:04 MST"), rep.took.Round(time.Second))
	w("- command: `%s`\n", cfg.command)
	w("- machine: %s\n", rep.machine)
	if rep.machine.Runsc != "" {
		w("- runsc: %s (_deps/bin/runsc, default flags: systrap platform)\n", rep.machine.Runsc)
	}
	w("- load average (1, 5, 15 min): %s before, %s after, highest 1-minute value sampled between phases %.2f; the load average counts the benchmark's own threads too (containerd, shims, sandboxes, this program), so it is no measure of other load: see outside CPU\n",
		rep.loadBefore, rep.loadAfter, rep.loadMax)
	w("- outside CPU (/proc sampled every %s, the benchmark a child subreaper so its shims stay in its tree; a run is VOID above %.0f%% of one core in user mode): %s\n",
		outsideInterval, 100*voidShare, rep.outside)
	if len(cfg.sizes) > 0 {
		w("- workload: `slowinit -mib N -seconds %g -checkpoint` (the workloads test image); its memory pattern is nearly incompressible, so stored ≈ raw size\n", cfg.seconds)
	} else {
		w("- sizes: none (-sizes none): no whole-pod or plain-start figures in this run\n")
	}
	if cfg.rootfs {
		w("- rootfs-only workload: `%s` under a PodSnapshotPolicy with snapshotScope: rootfs-only\n", strings.Join(rootfsCommand(), " "))
	}
	w("- runs: %d per figure and store; stores: %s\n", cfg.runs, storesList(cfg.stores))
	if slices.Contains(cfg.stores, lab.GCSShaped) {
		w("- shaped Cloud Storage: the same fake-gcs-server behind internal/testenv/shaped's proxy: %s (sources of the defaults: docs/benchmarks-floors.md)\n", cfg.shape)
	}
	if len(cfg.sizes) > 0 {
		renderSizes(rep, w)
	}
	if rootfsMeasured(rep) {
		renderRootfs(rep, w)
	}

	if _, ok := r.stat("torch_cold", 0); ok {
		w("\n## A real model server: torch\n\n| measurement | value | unit |\n|---|---|---|\n")
		for _, k := range []string{"torch_cold", "torch_restore", "torch_ratio", "torch_raw_mb", "torch_stored_mb", "torch_raw_mb_zero", "torch_stored_mb_zero",
			"torch_compiled_cold", "torch_compiled_restore", "torch_compiled_ratio", "torch_compiled_floor", "torch_compiled_floor_direct"} {
			st, ok := r.stat(k, 0)
			w("| %s | %s | %s |\n", r.metrics[k].Label, cell(st, ok, r.metrics[k].Unit), r.metrics[k].Unit)
		}
	}

	w("\n## Targets\n\n| target | measured (medians) | holds |\n|---|---|---|\n")
	for _, t := range evaluateTargets(rep) {
		w("| %s | %s | %s |\n", t.Target, t.Measured, t.Holds)
	}

	w("\n## What each row measures\n\n")
	for _, m := range r.order {
		if m.Note != "" && r.samples[m.Key] != nil {
			w("- %s: %s.\n", strings.TrimSpace(m.Label), m.Note)
		}
	}
	if len(cfg.sizes) > 0 {
		renderSizeNotes(w)
	}
	for _, n := range rep.notes {
		w("- %s\n", n)
	}
	return b.String()
}

// renderSizeNotes explains the whole-pod and plain-start rows.
func renderSizeNotes(w func(string, ...any)) {
	w("- Restore rows end at the restored workload's `checkpoint result: restore` line, the same state as the cold start's `ready` line; " +
		"the `memory ok` rows end once it has also read back all of its memory. A streaming restore (stream_restore = true, the default) is ready before its pages have all arrived: " +
		"its `memory ok` row includes the wait for the pages the workload reads; the `stream_restore = false` rows are the old path, the whole snapshot downloaded before runsc restores.\n")
	w("- The shim's overhead on a plain start vs `runsc run` includes containerd and ctr (image snapshot, rootfs mount, shim start, task API), not only the shim binary; " +
		"containerd's runc shim driving the same runsc pays all of that too, so our shim vs that reference is what the shim itself adds; " +
		"all three write to a file and are measured to the first output line; one warm-up run of each is not counted.\n")
	w("- The runsc floor uses the same runsc binary and flags, the same root filesystem and command, and `runsc create` + `runsc restore --detach --background` as the shim does; " +
		"its image is uncompressed and still in the page cache, like a node-cache entry.\n")
}

// renderSizes writes the whole-pod results by size and the plain starts.
func renderSizes(rep *report, w func(string, ...any)) {
	cfg, r := rep.cfg, rep.res
	w("\n## Results\n\n")
	w("| measurement |")
	for _, mib := range cfg.sizes {
		w(" %s |", sizeName(mib))
	}
	w(" unit |\n|---|")
	for range cfg.sizes {
		w("---|")
	}
	w("---|\n")
	for _, m := range r.order {
		if r.samples[m.Key] == nil || r.samples[m.Key][0] != nil {
			continue // size-independent rows go below
		}
		w("| %s |", strings.ReplaceAll(mdLabel(m.Label), "|", `\|`))
		for _, mib := range cfg.sizes {
			st, ok := r.stat(m.Key, mib)
			w(" %s |", cell(st, ok, m.Unit))
		}
		w(" %s |\n", m.Unit)
	}

	w("\n## Plain start: the shim's overhead\n\n| measurement | value | unit |\n|---|---|---|\n")
	for _, k := range []string{"plain_shim", "plain_runc_shim", "plain_runsc", "plain_overhead", "plain_overhead_runc_shim", "containerd_cost"} {
		st, ok := r.stat(k, 0)
		w("| %s | %s | %s |\n", r.metrics[k].Label, cell(st, ok, r.metrics[k].Unit), r.metrics[k].Unit)
	}
}

func mdLabel(s string) string {
	if strings.HasPrefix(s, "  ") {
		return "&nbsp;&nbsp;" + strings.TrimSpace(s)
	}
	return s
}

func storesList(ss []lab.Storage) string {
	var names []string
	for _, s := range ss {
		names = append(names, fmt.Sprintf("%s (%s)", s, storeName(s)))
	}
	return strings.Join(names, ", ")
}

type jsonMetric struct {
	Metric
	BySize map[string]Stat `json:"by_size_mib"`
}

type jsonReport struct {
	Date       string      `json:"date"`
	DurationS  float64     `json:"duration_s"`
	Command    string      `json:"command"`
	Machine    lab.Machine `json:"machine"`
	LoadBefore string      `json:"load_before"`
	LoadAfter  string      `json:"load_after"`
	LoadMax1m  float64     `json:"load_max_1m"`
	SizesMiB   []int       `json:"sizes_mib"`
	Runs       int         `json:"runs"`
	Stores     []string    `json:"stores"`
	InitS      float64     `json:"init_seconds"`
	// RootfsWorkload is the command of the rootfs-only section (its rootfs_* metrics),
	// when it ran.
	RootfsWorkload string       `json:"rootfs_workload,omitempty"`
	Metrics        []jsonMetric `json:"metrics"`
	Targets        []target     `json:"targets"`
	Notes          []string     `json:"notes,omitempty"`
	// Void: processes outside the benchmark's tree used more than voidShare of one core
	// in user mode during the run (OutsideCPU).
	Void       bool          `json:"void"`
	OutsideCPU outsideReport `json:"outside_cpu"`
	// Shape is the gcs-shaped store's shaping, when the run had that store.
	Shape *shapeJSON `json:"shape,omitempty"`
}

// shapeJSON is shaped.Options in the report's units.
type shapeJSON struct {
	LatencyMs float64 `json:"first_byte_latency_ms"`
	ConnMBps  float64 `json:"per_connection_mbps"`
	TotalMBps float64 `json:"total_mbps"`
}

func writeFiles(rep *report, mdPath, jsonPath string) error {
	jr := jsonReport{
		Date: rep.started.UTC().Format(time.RFC3339), DurationS: rep.took.Seconds(), Command: rep.cfg.command,
		Machine: rep.machine, LoadBefore: rep.loadBefore, LoadAfter: rep.loadAfter, LoadMax1m: rep.loadMax,
		SizesMiB: rep.cfg.sizes, Runs: rep.cfg.runs, InitS: rep.cfg.seconds, Targets: evaluateTargets(rep), Notes: rep.notes,
		Void: rep.outside.Void, OutsideCPU: rep.outside,
	}
	if sh := rep.cfg.shape; slices.Contains(rep.cfg.stores, lab.GCSShaped) {
		jr.Shape = &shapeJSON{LatencyMs: float64(sh.Latency) / float64(time.Millisecond), ConnMBps: sh.ConnBytesPerSec / 1e6, TotalMBps: sh.TotalBytesPerSec / 1e6}
	}
	for _, s := range rep.cfg.stores {
		jr.Stores = append(jr.Stores, string(s))
	}
	if rootfsMeasured(rep) {
		jr.RootfsWorkload = strings.Join(rootfsCommand(), " ")
	}
	for _, m := range rep.res.order {
		by := map[string]Stat{}
		for mib := range rep.res.samples[m.Key] {
			st, _ := rep.res.stat(m.Key, mib)
			by[strconv.Itoa(mib)] = st
		}
		if len(by) > 0 {
			jr.Metrics = append(jr.Metrics, jsonMetric{Metric: m, BySize: by})
		}
	}
	js, err := json.MarshalIndent(jr, "", "  ")
	if err != nil {
		return err
	}
	for _, p := range []string{mdPath, jsonPath} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(jsonPath, append(js, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(mdPath, []byte(renderMarkdown(rep)), 0o644)
}
