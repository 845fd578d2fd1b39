package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
)

// target is one of the issues' targets, evaluated.
type target struct {
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Holds    string `json:"holds"` // yes, no, only for cached restores, not measured, ...
}

func median(r *Results, key string, mib int) (float64, bool) {
	st, ok := r.stat(key, mib)
	return st.Median, ok
}

// verdict collects the checks of one target: each condition measured holds or not; a
// condition the run could not measure (a size it did not run) is missing.
type verdict struct {
	checked, failed int
	missing         []string
}

func (v *verdict) check(ok bool) {
	v.checked++
	if !ok {
		v.failed++
	}
}

func (v *verdict) miss(what string) {
	if !slices.Contains(v.missing, what) {
		v.missing = append(v.missing, what)
	}
}

func (v verdict) holds() string {
	gap := ""
	if len(v.missing) > 0 {
		gap = " (this run lacks " + strings.Join(v.missing, ", ") + ")"
	}
	switch {
	case v.checked == 0:
		return "not measured" + gap
	case v.failed > 0:
		return "no" + gap
	case gap != "":
		return "yes where measured" + gap
	}
	return "yes"
}

// bySize evaluates a target at each size of the run: at the target's sizes (all when
// none are named) each figure is checked, at the others it is shown for reference;
// target sizes the run lacks are missing. figure returns the text for a size, whether
// the condition holds, and false when a figure it needs was not measured.
func bySize(cfg config, sizes []int, v *verdict, figure func(mib int) (text string, holds, measured bool)) string {
	var parts []string
	for _, mib := range cfg.sizes {
		text, ok, measured := figure(mib)
		if !measured {
			continue
		}
		if len(sizes) == 0 || slices.Contains(sizes, mib) {
			v.check(ok)
		} else {
			text += " (not a target size)"
		}
		parts = append(parts, sizeName(mib)+": "+text)
	}
	for _, mib := range sizes {
		if !slices.Contains(cfg.sizes, mib) {
			v.miss(sizeName(mib))
		}
	}
	if len(sizes) == 0 && len(parts) == 0 {
		v.miss("the figures")
	}
	return strings.Join(parts, "; ")
}

func evaluateTargets(rep *report) []target {
	out := floorTargets(rep)
	out = append(out, rootfsTarget(rep))
	out = append(out, streamingTargets(rep)...)
	return append(out, earlierTargets(rep)...)
}

// streamingTargets are issue 16's: streaming restores, their concurrency and memory, and
// the commit path against the compressor.
func streamingTargets(rep *report) []target {
	r, cfg := rep.res, rep.cfg
	gcs := slices.Contains(cfg.stores, lab.GCS)
	local := slices.Contains(cfg.stores, lab.Local)
	var out []target
	notMeasured := func(t target, why string) target {
		t.Holds = "not measured (" + why + ")"
		return t
	}
	// sized is a target checked size by size (bySize over sizes, nil: every size of the
	// run), or not measured when the run lacks its store (have false: lacks says which);
	// more, when set, adds a check beyond the sizes.
	const noGCS, noLocal = "no fake-gcs-server store in this run", "no local store in this run"
	sized := func(text string, have bool, lacks string, sizes []int, figure func(mib int) (string, bool, bool), more func(*target, *verdict)) target {
		t := target{Target: text}
		if !have {
			return notMeasured(t, lacks)
		}
		var v verdict
		t.Measured = bySize(cfg, sizes, &v, figure)
		if more != nil {
			more(&t, &v)
		}
		t.Holds = v.holds()
		return t
	}

	// 2. The first restore from the emulator to "memory ok" against what the emulator
	// alone and the node cache allow; the same against the shaped store alone when the
	// run has it.
	memOK := func(st lab.Storage, text string, have bool, lacks string) target {
		s := string(st)
		return sized(text, have, lacks, nil, func(mib int) (string, bool, bool) {
			first, ok1 := median(r, "restore_first_memok_"+s, mib)
			serve, ok2 := median(r, serveKey(st), mib)
			cached, ok3 := median(r, "restore_cached_memok_"+s, mib)
			bound := max(serve, cached)
			busy := ""
			if b, ok := median(r, "cpu_busy_first_"+s, mib); ok {
				bc, _ := median(r, "cpu_busy_cached_"+s, mib)
				busy = fmt.Sprintf(" (host CPU busy %.0f%%, cached %.0f%%)", b, bc)
			}
			return fmt.Sprintf("%.3f s vs the larger of the store alone %.3f s and cached %.3f s = %.2fx%s", first, serve, cached, first/bound, busy),
				first/bound <= 1.2, ok1 && ok2 && ok3
		}, nil)
	}
	out = append(out, memOK(lab.GCS, "first restore to `memory ok` from fake-gcs-server ≤ 1.2x the larger of the emulator's own time to serve the stored bytes and the cached restore to `memory ok`",
		gcs, noGCS))
	if slices.Contains(cfg.stores, lab.GCSShaped) {
		out = append(out, memOK(lab.GCSShaped, "first restore to `memory ok` from shaped Cloud Storage ≤ 1.2x the larger of the shaped store's own time to serve the stored bytes (parallel ranged reads) and the cached restore to `memory ok`",
			true, ""))
	}

	// 3. The first restore from the local store against the runsc floor.
	out = append(out, sized("first restore from the local store ≤ 1.2x the raw `runsc create` + `runsc restore --background` floor at 64 MiB, 512 MiB and 2 GiB",
		local, noLocal, []int{64, 512, 2048}, func(mib int) (string, bool, bool) {
			first, ok1 := median(r, "restore_first_local", mib)
			floor, ok2 := median(r, "raw_restore", mib)
			return fmt.Sprintf("%.3f s / floor %.3f s = %.2fx", first, floor, first/floor), first/floor <= 1.2, ok1 && ok2
		}, nil))

	// 7. The shim's memory, the streaming restore included.
	if len(cfg.sizes) == 0 {
		out = append(out, target{Target: "shim peak RSS < 100 MiB at 2 GiB, during upload and during a streaming restore until its pages have all arrived",
			Holds: "not measured (-sizes none)"})
	} else {
		largest := slices.Max(cfg.sizes)
		t := target{Target: "shim peak RSS < 100 MiB at 2 GiB, during upload and during a streaming restore until its pages have all arrived"}
		var v verdict
		if largest != 2048 {
			v.miss("2 GiB")
			t.Target += fmt.Sprintf(" (shown at %s, the largest size of this run)", sizeName(largest))
		}
		var ps, ref []string
		for _, st := range cfg.stores {
			for _, k := range []struct{ key, what string }{{"rss_upload_", "upload"}, {"rss_download_", "streaming restore"}} {
				if s, ok := r.stat(k.key+string(st), largest); ok {
					if largest == 2048 {
						v.check(s.Max < 100)
					}
					ps = append(ps, fmt.Sprintf("%s %s max %.1f MiB", st, k.what, s.Max))
				}
			}
			if s, ok := r.stat("rss_whole_"+string(st), largest); ok {
				ref = append(ref, fmt.Sprintf("%s %.1f MiB", st, s.Max))
			}
		}
		t.Measured = strings.Join(ps, ", ")
		if len(ref) > 0 {
			t.Measured += " (whole-download restore, for reference: " + strings.Join(ref, ", ") + ")"
		}
		t.Holds = v.holds()
		out = append(out, t)
	}

	// 8. The commit path against the compressor alone.
	out = append(out, sized("trigger → committed, local store, ≥ 80% of the standalone compressor's throughput at 512 MiB and 2 GiB",
		local, noLocal, []int{512, 2048}, func(mib int) (string, bool, bool) {
			z, okz := median(r, "zstd_mbps", mib)
			c, okc := median(r, "commit_mbps_local", mib)
			p := fmt.Sprintf("%.0f%% (%.0f MB/s vs zstd %.0f MB/s", 100*c/z, c, z)
			if u, ok := median(r, "upload_mbps_local", mib); ok {
				p += fmt.Sprintf("; upload part alone %.0f%%", 100*u/z)
			}
			if sv, ok := median(r, "raw_save_mbps", mib); ok {
				p += fmt.Sprintf("; gVisor's checkpoint alone %.0f MB/s", sv)
			}
			return p + ")", c/z >= 0.8, okz && okc
		}, nil))
	return out
}

// restoreHolds says whether a restore target holds: for first and cached restores,
// for cached ones only, or not at all; any is false when nothing was measured.
func restoreHolds(any, firstOK, cachedOK bool) string {
	switch {
	case !any:
		return "not measured"
	case firstOK:
		return "yes"
	case cachedOK:
		return "only for cached restores"
	}
	return "no"
}

// earlierTargets are the targets of the first restore and plain-start work.
func earlierTargets(rep *report) []target {
	r, cfg := rep.res, rep.cfg
	var out []target
	ratioTarget := func(st lab.Storage, limit float64) target {
		t := target{Target: fmt.Sprintf("restore from the %s ≤ %gx raw runsc restore", storeName(st), limit)}
		var parts []string
		firstOK, cachedOK, any := true, true, false
		for _, mib := range cfg.sizes {
			floor, ok1 := median(r, "raw_restore", mib)
			first, ok2 := median(r, "restore_first_"+string(st), mib)
			cached, ok3 := median(r, "restore_cached_"+string(st), mib)
			if !ok1 || !ok2 || !ok3 {
				continue
			}
			any = true
			p := fmt.Sprintf("%s: first %.2fx, cached %.2fx", sizeName(mib), first/floor, cached/floor)
			// What containerd and ctr cost on any start, measured with the standard shim.
			if fixed, ok := containerdCost(r); ok {
				p += fmt.Sprintf(" (less containerd's own cost %.0f ms: first %.2fx)", fixed*1e3, (first-fixed)/floor)
			}
			parts = append(parts, p)
			firstOK = firstOK && first/floor <= limit
			cachedOK = cachedOK && cached/floor <= limit
		}
		t.Measured = strings.Join(parts, "; ")
		t.Holds = restoreHolds(any, firstOK, cachedOK)
		return t
	}
	for _, st := range cfg.stores {
		limit := 1.25
		if st.OnGCS() {
			limit = 1.5
		}
		out = append(out, ratioTarget(st, limit))
	}

	{
		t := target{Target: fmt.Sprintf("restore ≥ 5x faster than cold start (%gs init) at every size", cfg.seconds)}
		var parts []string
		firstOK, cachedOK, any := true, true, false
		for _, mib := range cfg.sizes {
			cold, ok := median(r, "cold", mib)
			if !ok {
				continue
			}
			var ps []string
			for _, st := range cfg.stores {
				first, ok1 := median(r, "restore_first_"+string(st), mib)
				cached, ok2 := median(r, "restore_cached_"+string(st), mib)
				if !ok1 || !ok2 {
					continue
				}
				any = true
				ps = append(ps, fmt.Sprintf("%s %.1fx first / %.1fx cached", st, cold/first, cold/cached))
				firstOK = firstOK && cold/first >= 5
				cachedOK = cachedOK && cold/cached >= 5
			}
			parts = append(parts, sizeName(mib)+": "+strings.Join(ps, ", "))
		}
		t.Measured = strings.Join(parts, "; ")
		t.Holds = restoreHolds(any, firstOK, cachedOK)
		out = append(out, t)
	}

	{
		t := target{Target: "shim overhead on a plain start ≤ 10%"}
		shim, ok1 := median(r, "plain_shim", 0)
		direct, ok2 := median(r, "plain_runsc", 0)
		if ok1 && ok2 {
			t.Measured = fmt.Sprintf("%.0f ms through the shim vs %.0f ms runsc run: %+.0f%%", shim*1e3, direct*1e3, 100*(shim/direct-1))
			if runcShim, ok := median(r, "plain_runc_shim", 0); ok {
				t.Measured += fmt.Sprintf("; containerd's runc shim driving runsc: %.0f ms, so our shim adds %+.0f%% over the standard one", runcShim*1e3, 100*(shim/runcShim-1))
			}
			// The overhead rows of the table are medians of each set's own ratio, which
			// differ from these ratios of medians.
			t.Measured += " (ratios of the medians)"
		}
		t.Holds = yesNo(ok1 && ok2, shim/direct-1 <= 0.10)
		out = append(out, t)
	}
	return out
}

// containerdCost is "containerd's own cost" in seconds: the median of the per-run
// differences between a plain start through containerd's runc shim driving runsc and
// `runsc run` directly (containerd_cost); false when not measured or not positive.
func containerdCost(r *Results) (float64, bool) {
	c, ok := median(r, "containerd_cost", 0)
	return c, ok && c > 0
}

func yesNo(measured, ok bool) string {
	switch {
	case !measured:
		return "not measured"
	case ok:
		return "yes"
	}
	return "no"
}
