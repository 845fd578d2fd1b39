// Command bench measures pod snapshots on this machine (`make bench`) and writes
// docs/benchmarks.md and docs/benchmarks.json. Side by side, in one run:
//
//  1. cold start to ready of slowinit through the shim (ctr run -> "ready" in its output);
//  2. restore to ready through the shim from each store (ctr run -> "checkpoint result:
//     restore"): the first restore of a snapshot (node cache empty: download, verify,
//     decompress, runsc restore) and a second one (from the node cache, --direct), and
//     that again through a shim config with restore_direct = false;
//  3. the floor: `runsc create` + `runsc restore` of the same workload from an uncompressed
//     image that runsc itself wrote, without containerd or the shim;
//  4. trigger -> committed and its throughput, beside the standalone zstd compressor
//     (storage.Zstd, in this process) on the same image bytes;
//  5. snapshot size raw and stored;
//  6. a plain container (no policy) through the shim versus `runsc run`: the shim's
//     overhead (time to the first output line of `echo ready`);
//  7. the shim's peak RSS (VmHWM) during upload and during a streaming restore (until
//     its pages have fully arrived);
//  8. for comparison, the first restore with stream_restore = false (the whole snapshot
//     downloaded before runsc restores), through a second shim config;
//  9. on fake-gcs-server, four restores of one snapshot at once on one node (node cache
//     empty): each one's time, and how many downloads of the pages file their shims
//     made together (the fetched_bytes of their stream lines / its stored size);
//  10. with -rootfs (the default), per store: a workload whose set-up writes 500 MiB of
//     files over 10 s (fsinit) under a policy with snapshotScope: rootfs-only: cold start
//     to ready, trigger -> committed and the layer's size, and restores of the same spec
//     on its root file system layer (first from the store, then from the node cache),
//     each to ready with its files checked (rootfs.go).
//
// Beside them, floors with none of our code (floors.go, docs/benchmarks-floors.md): the
// disk of the node cache, containerd's own cost, and the CPU others used meanwhile
// (outside.go: a run above 10% of one core is VOID). -stores gcs-shaped adds a third store,
// fake-gcs-server behind Cloud Storage's latency and bandwidth (-shape-*).
//
// Each figure is the median of -runs runs with min and max. -sizes none skips 1-9 (the
// whole-pod and plain-start figures), for example to run the rootfs-only section alone:
//
//	go run ./hack/bench [-sizes 64,512,2048|none] [-runs 3] [-stores local,gcs,gcs-shaped] [-seconds 10] [-torch=false] [-rootfs=false]
//
// It needs root, `make deps` and `make build`; it runs on internal/testenv/lab, as the demo does, and removes
// everything it started, also on error or Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv"
	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
	"github.com/podsnapshot/podsnapshot/internal/testenv/shaped"
)

type config struct {
	sizes   []int // MiB
	runs    int
	stores  []lab.Storage
	seconds float64
	torch   bool // also measure the torch model server
	rootfs  bool // also measure the rootfs-only scope (fsinit)
	md      string
	json    string
	command string

	shape shaped.Options // the gcs-shaped store's latency and bandwidth
}

func main() {
	sizes := flag.String("sizes", "64,512,2048", "workload sizes in MiB, comma-separated; none: no whole-pod or plain-start figures")
	runs := flag.Int("runs", 3, "runs per figure (the median, min and max are reported)")
	stores := flag.String("stores", "local,gcs", "snapshot stores: local, gcs (fake-gcs-server), gcs-shaped (fake-gcs-server behind Cloud Storage's latency and bandwidth, -shape-*)")
	shape := shapeFlags()
	seconds := flag.Float64("seconds", 10, "the workload's initialisation time")
	md := flag.String("md", "docs/benchmarks.md", "markdown report to write (relative to the repository root)")
	js := flag.String("json", "docs/benchmarks.json", "JSON results to write (relative to the repository root)")
	torch := flag.Bool("torch", true, "also measure the torch model server, eager and compiled (about 7 minutes)")
	rootfs := flag.Bool("rootfs", true, "also measure the rootfs-only snapshot scope: fsinit writing 500 MiB of files over 10 s (about 20 s per run on the local store, 30 s on fake-gcs-server)")
	command := flag.String("command", "", "the command line to record in the report (default: this program's)")
	flag.Parse()

	var err error
	cfg := config{runs: *runs, seconds: *seconds, torch: *torch, rootfs: *rootfs, md: *md, json: *js, command: *command}
	for _, s := range strings.Split(*sizes, ",") {
		if *sizes == "none" {
			break
		}
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			usage(fmt.Sprintf("-sizes: %q is not a positive number of MiB", s))
		}
		cfg.sizes = append(cfg.sizes, n)
	}
	for _, s := range strings.Split(*stores, ",") {
		st := lab.Storage(strings.TrimSpace(s))
		if st != lab.Local && !st.OnGCS() {
			usage(fmt.Sprintf("-stores: %q is not local, gcs or gcs-shaped", s))
		}
		cfg.stores = append(cfg.stores, st)
	}
	if cfg.shape, err = shape(slices.Contains(cfg.stores, lab.GCSShaped)); err != nil {
		usage(err.Error())
	}
	if cfg.runs < 1 || cfg.seconds < 0 || flag.NArg() > 0 {
		usage("-runs must be at least 1, -seconds not negative, no arguments")
	}
	if len(cfg.sizes) == 0 && !cfg.rootfs && !cfg.torch {
		usage("-sizes none with -rootfs=false and -torch=false measures nothing")
	}
	if cfg.command == "" {
		cfg.command = "go run ./hack/bench " + strings.Join(os.Args[1:], " ")
	}

	ctx := lab.InterruptContext(logf)
	if err := run(ctx, cfg); err != nil {
		logf("FAILED: %v", err)
		if ctx.Err() != nil {
			os.Exit(130)
		}
		os.Exit(1)
	}
}

func usage(msg string) {
	fmt.Fprintln(os.Stderr, "bench: "+msg)
	fmt.Fprintln(os.Stderr, "usage: bench [-sizes 64,512,2048|none] [-runs 3] [-stores local,gcs,gcs-shaped] [-shape-latency MS] [-shape-conn-mbps MB/s] [-shape-total-mbps MB/s] [-seconds 10] [-torch=false] [-rootfs=false] [-md FILE] [-json FILE]")
	os.Exit(2)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// report is everything the output files need.
type report struct {
	cfg        config
	started    time.Time
	took       time.Duration
	machine    lab.Machine
	loadBefore string
	loadAfter  string
	loadMax    float64 // highest 1-minute load average seen between phases
	res        *Results
	notes      []string
	images     string            // directory of the floor's uncompressed images
	imageOf    map[int]*rawImage // by size, for the standalone compressor
	outside    outsideReport     // CPU of processes outside the benchmark's tree (outside.go)
}

func run(ctx context.Context, cfg config) error {
	repo, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	rep := &report{cfg: cfg, started: time.Now(), res: newResults(), loadBefore: loadavg(), imageOf: map[int]*rawImage{}}
	outside := watchOutside()
	if rep.images, err = os.MkdirTemp("/tmp", "psbench-images-"); err != nil {
		return err
	}
	defer os.RemoveAll(rep.images)
	defineMetrics(rep.res, cfg.stores)
	defineCachedPathMetrics(rep.res)
	defineRootfsMetrics(rep.res, cfg.stores)
	defineHotMetrics(rep.res)
	defineTorchFloorMetrics(rep.res)
	logf("load average before: %s", rep.loadBefore)

	for i, st := range cfg.stores {
		if len(cfg.sizes) == 0 && !cfg.rootfs {
			break // nothing to measure in a store's lab
		}
		if err := runLab(ctx, rep, st, i == 0); err != nil {
			return err
		}
	}
	if cfg.torch {
		if err := measureTorch(ctx, rep); err != nil {
			return err
		}
	}
	rep.took = time.Since(rep.started)
	rep.outside = outside.stop()
	rep.loadAfter = loadavg()
	logf("load average after: %s", rep.loadAfter)

	md, js := cfg.md, cfg.json
	if !filepath.IsAbs(md) {
		md = filepath.Join(repo, md)
	}
	if !filepath.IsAbs(js) {
		js = filepath.Join(repo, js)
	}
	if err := writeFiles(rep, md, js); err != nil {
		return err
	}
	fmt.Print(renderMarkdown(rep))
	logf("wrote %s and %s", md, js)
	return nil
}

// runLab brings up a lab with store st and measures in it; the first lab also measures
// what does not depend on the store (the runsc floor, the compressor, plain starts).
// Last come the rootfs-only cycles (-rootfs).
func runLab(ctx context.Context, rep *report, st lab.Storage, first bool) (err error) {
	cfg := rep.cfg
	l, err := lab.Start(ctx, lab.Options{Storage: st, Namespace: "bench", Logf: logf, Shape: &cfg.shape})
	if err != nil {
		return fmt.Errorf("set up the %s lab: %w", st, err)
	}
	defer func() {
		logf("cleaning up the %s lab", st)
		cr := l.Close()
		logf("cleanup: %s", cr)
		if err == nil && !cr.Clean() {
			err = fmt.Errorf("cleanup incomplete: %s", cr)
		}
	}()
	if rep.machine.CPU == "" {
		rep.machine = l.DescribeMachine()
	}
	res := rep.res

	if first && len(cfg.sizes) > 0 {
		if err := measureDirect(ctx, rep, l); err != nil {
			return err
		}
	}
	var configs benchConfigs
	if configs.whole, err = writeWholeConfig(l); err != nil {
		return err
	}
	if configs.buffered, err = writeBufferedConfig(l); err != nil {
		return err
	}
	n := 0
	for _, mib := range cfg.sizes {
		for r := 0; r < cfg.runs; r++ {
			n++
			rep.sampleLoad()
			// The standalone compressor, on the same image bytes, right before the
			// shim's cycle, so both see about the same load on the machine.
			if img := rep.imageOf[mib]; img != nil {
				rawB, stored, took, cpu, err := compressImage(img.dir)
				if err != nil {
					return fmt.Errorf("compress the %d MiB image: %w", mib, err)
				}
				res.add("zstd_mbps", mib, float64(rawB)/1e6/took.Seconds())
				res.add("zstd_cpu", mib, cpu.Seconds()/(float64(rawB)/1e9))
				res.add("zstd_ratio", mib, float64(rawB)/float64(stored))
				logf("  zstd alone: %.0f MB/s, %.2f CPU s/GB (%.1f MB -> %.1f MB)", float64(rawB)/1e6/took.Seconds(),
					cpu.Seconds()/(float64(rawB)/1e9), float64(rawB)/1e6, float64(stored)/1e6)
			}
			// The commit target is on the local store and the plain emulator only.
			if img := rep.imageOf[mib]; img != nil && st != lab.GCSShaped {
				took, err := uploadAlone(ctx, l, img.dir)
				if err != nil {
					return fmt.Errorf("%s, %d MiB: %w", st, mib, err)
				}
				res.add("upload_alone_"+string(st), mib, took.Seconds())
				logf("  upload part alone (repo.Commit of runsc's image, no sandbox): %.2fs", took.Seconds())
			}
			emulatorDown := 0.0
			if img := rep.imageOf[mib]; img != nil && st.OnGCS() {
				if emulatorDown, err = storeAlone(ctx, rep, l, mib, img); err != nil {
					return err
				}
			}
			what := "cold start, checkpoint, restores: first, cached, whole download"
			if st.OnGCS() {
				what += ", 4 at once"
			}
			logf("%s, %d MiB, run %d/%d: %s", st, mib, r+1, cfg.runs, what)
			c, err := shimCycle(ctx, l, mib, cfg.seconds, n, configs)
			if err != nil {
				return fmt.Errorf("%s, %d MiB, run %d: %w", st, mib, r+1, err)
			}
			s := string(st)
			res.add("cold", mib, c.coldToReady.Seconds())
			res.add("restore_first_"+s, mib, c.first.toReady.Seconds())
			res.add("restore_cached_"+s, mib, c.cached.toReady.Seconds())
			res.add("restore_cached_buffered_"+s, mib, c.buffered.toReady.Seconds())
			res.add("restore_whole_"+s, mib, c.whole.toReady.Seconds())
			res.add("restore_first_download_"+s, mib, float64(c.first.downloadMs)/1e3)
			res.add("restore_first_runsc_"+s, mib, float64(c.first.runscMs)/1e3)
			switch {
			case c.first.streamed:
				res.add("restore_first_stream_"+s, mib, float64(c.first.streamMs)/1e3)
				res.add("restore_first_sync_"+s, mib, float64(c.first.syncMs)/1e3)
			case adoptedDecision(c.first.decision):
				// The local store's object, in memory: verified whole, not streamed.
			default:
				rep.note(fmt.Sprintf("A first restore from the %s at %s did not stream (FUSE unavailable?): it downloaded the whole snapshot first; its decision: %s",
					storeName(st), sizeName(mib), c.first.decision))
			}
			res.add("restore_cached_runsc_"+s, mib, float64(c.cached.runscMs)/1e3)
			res.add("restore_whole_download_"+s, mib, float64(c.whole.downloadMs)/1e3)
			res.add("restore_first_memok_"+s, mib, c.first.toMemOK.Seconds())
			res.add("restore_cached_memok_"+s, mib, c.cached.toMemOK.Seconds())
			res.add("restore_cached_buffered_memok_"+s, mib, c.buffered.toMemOK.Seconds())
			res.add("restore_whole_memok_"+s, mib, c.whole.toMemOK.Seconds())
			if emulatorDown > 0 {
				res.add(serveKey(st), mib, float64(c.storedBytes)/1e6/emulatorDown)
			}
			if cc := c.concurrent; cc != nil {
				res.add("restore_conc_"+s, mib, cc.median().Seconds())
				res.add("restore_conc_max_"+s, mib, cc.slowest().Seconds())
				res.add("downloads_conc_"+s, mib, cc.downloads)
				logf("  4 restores at once: median %.2fs, slowest %.2fs; %d streamed, %.2f downloads of pages.img (%d of %d stored bytes); the shims: %s",
					cc.median().Seconds(), cc.slowest().Seconds(), cc.streamed, cc.downloads, cc.fetchedBytes, c.pagesStored, strings.Join(cc.parts, ", "))
			}
			if cc := c.concurrentCached; cc != nil {
				res.add("restore_conc_cached_max_"+s, mib, cc.slowest().Seconds())
				logf("  4 cached restores at once: median %.2fs, slowest %.2fs; the shims: %s",
					cc.median().Seconds(), cc.slowest().Seconds(), strings.Join(cc.parts, ", "))
			}
			for name, rr := range map[string]*restoreRun{"first": &c.first, "cached": &c.cached, "whole": &c.whole} {
				if rr.cpuBusy > 0 {
					res.add("cpu_busy_"+name+"_"+s, mib, 100*rr.cpuBusy)
				}
			}
			res.add("commit_"+s, mib, c.triggerToCommitted.Seconds())
			res.add("upload_"+s, mib, float64(c.uploadMs)/1e3)
			res.add("commit_mbps_"+s, mib, float64(c.rawBytes)/1e6/c.triggerToCommitted.Seconds())
			res.add("upload_mbps_"+s, mib, float64(c.rawBytes)/1e6/(float64(c.uploadMs)/1e3))
			if c.shimUploadCPU > 0 {
				res.add("upload_cpu_"+s, mib, c.shimUploadCPU.Seconds()/(float64(c.rawBytes)/1e9))
			}
			res.add("raw_mb", mib, float64(c.rawBytes)/1e6)
			res.add("stored_mb_"+s, mib, float64(c.storedBytes)/1e6)
			if c.shimPeakUpload > 0 {
				res.add("rss_upload_"+s, mib, float64(c.shimPeakUpload)/(1<<20))
			}
			if c.first.shimPeak > 0 {
				res.add("rss_download_"+s, mib, float64(c.first.shimPeak)/(1<<20))
			}
			if c.cached.shimPeak > 0 {
				res.add("rss_cached_"+s, mib, float64(c.cached.shimPeak)/(1<<20))
			}
			if c.whole.shimPeak > 0 {
				res.add("rss_whole_"+s, mib, float64(c.whole.shimPeak)/(1<<20))
			}
			logf("  cold %.2fs, committed %.2fs after trigger (upload %d ms), %0.1f/%0.1f MB raw/stored; restore %.2fs (download %d ms, runsc %d ms, streamed %v: %d bytes in %d ms), memory ok %.2fs, cached %.2fs, whole download %.2fs; shim peak %s up, %s down",
				c.coldToReady.Seconds(), c.triggerToCommitted.Seconds(), c.uploadMs, float64(c.rawBytes)/1e6, float64(c.storedBytes)/1e6,
				c.first.toReady.Seconds(), c.first.downloadMs, c.first.runscMs, c.first.streamed, c.first.fetchedBytes, c.first.streamMs,
				c.first.toMemOK.Seconds(), c.cached.toReady.Seconds(), c.whole.toReady.Seconds(),
				mibStr(c.shimPeakUpload), mibStr(c.first.shimPeak))
		}
	}
	if st == hotStore(cfg) && hotSize(cfg) > 0 {
		if err := measureHot(ctx, rep, l, hotSize(cfg)); err != nil {
			return err
		}
	}
	if cfg.rootfs {
		// After the whole-pod cycles, in the same lab: its own policy and label.
		return measureRootfs(ctx, rep, l)
	}
	return nil
}

// measureDirect measures what runs without the shim: plain starts (with and without the
// shim, alternating), and per size the runsc floor and the standalone compressor.
func measureDirect(ctx context.Context, rep *report, l *lab.Lab) error {
	cfg, res := rep.cfg, rep.res
	raw, err := newRawRunsc(l, rep.images)
	if err != nil {
		return err
	}
	plainBundle, err := raw.bundle("plain", nil, "echo", "ready")
	if err != nil {
		return err
	}
	// Plain starts are short and noisy: at least 10 of each, interleaved.
	plainRuns := max(cfg.runs, 10)
	logf("plain start: ctr run (our shim, containerd's runc shim with runsc) versus runsc run, %d runs each after one warm-up each", plainRuns)
	for r := 0; r <= plainRuns; r++ {
		shim, err := plainShim(ctx, l, r)
		if err != nil {
			return fmt.Errorf("plain start through the shim: %w", err)
		}
		runcShim, err := plainRuncShim(ctx, l, r)
		if err != nil {
			return fmt.Errorf("plain start through containerd's runc shim: %w", err)
		}
		direct, err := raw.plain(ctx, plainBundle)
		if err != nil {
			return fmt.Errorf("plain runsc run: %w", err)
		}
		if r == 0 {
			continue // warm-up
		}
		res.add("plain_shim", 0, shim.Seconds())
		res.add("plain_runc_shim", 0, runcShim.Seconds())
		res.add("plain_runsc", 0, direct.Seconds())
		res.add("plain_overhead", 0, 100*(shim.Seconds()/direct.Seconds()-1))
		res.add("plain_overhead_runc_shim", 0, 100*(shim.Seconds()/runcShim.Seconds()-1))
		res.add("containerd_cost", 0, runcShim.Seconds()-direct.Seconds())
		logf("  shim %.3fs, runc shim %.3fs, runsc run %.3fs", shim.Seconds(), runcShim.Seconds(), direct.Seconds())
	}

	for _, mib := range cfg.sizes {
		rep.sampleLoad()
		logf("runsc directly, %d MiB: cold start with its own checkpoint (uncompressed)", mib)
		img, err := raw.checkpoint(ctx, strconv.Itoa(mib), cfg.seconds, slowinitCommand(mib, cfg.seconds))
		if err != nil {
			return fmt.Errorf("runsc floor, %d MiB: %w", mib, err)
		}
		res.add("raw_cold", mib, img.coldToReady.Seconds())
		res.add("raw_save", mib, img.saveTook.Seconds())
		res.add("raw_save_mbps", mib, float64(img.bytes)/1e6/img.saveTook.Seconds())
		res.add("raw_image_mb", mib, float64(img.bytes)/1e6)
		for r := 0; r < cfg.runs; r++ {
			// The floor with the shim's flags (--background), and without for reference.
			for _, background := range []bool{true, false} {
				ready, memOK, err := raw.restore(ctx, mib, img, background)
				if err != nil {
					return fmt.Errorf("runsc floor, %d MiB: %w", mib, err)
				}
				key := "raw_restore"
				if !background {
					key = "raw_restore_fg"
				}
				res.add(key, mib, ready.Seconds())
				res.add(key+"_memok", mib, memOK.Seconds())
				logf("  runsc create+restore (background %v) %.3fs (memory ok %.3fs)", background, ready.Seconds(), memOK.Seconds())
			}
		}
		if err := measureCachedPath(ctx, res, raw, mib, img, cfg.runs); err != nil {
			return fmt.Errorf("runsc floor, %d MiB: %w", mib, err)
		}
		rep.imageOf[mib] = img
		if err := diskFloors(rep, l, mib); err != nil {
			return err
		}
	}
	return nil
}

func mibStr(b int64) string {
	if b <= 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

// loadavg returns /proc/loadavg's three load averages.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// note adds a line to the report's notes, once.
func (r *report) note(s string) {
	if !slices.Contains(r.notes, s) {
		r.notes = append(r.notes, s)
	}
}

// sampleLoad records the 1-minute load average between phases.
func (r *report) sampleLoad() {
	f := strings.Fields(loadavg())
	if len(f) > 0 {
		if v, err := strconv.ParseFloat(f[0], 64); err == nil && v > r.loadMax {
			r.loadMax = v
		}
	}
}

func ownGroupAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
