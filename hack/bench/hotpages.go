package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
)

// hotPercent is the share of its memory the hot-pages workload touches after a restore
// before it says "hot ok" (slowinit -hot-percent): a hot set that is a small part of the
// snapshot, as the REAP/FaaSnap case asks.
const hotPercent = 10

// hotStore is the store the hot-pages figures come from: the shaped store when the run
// has it (a round trip per frame is what the list saves), else the plain emulator; ""
// when the run has neither.
func hotStore(cfg config) lab.Storage {
	for _, st := range []lab.Storage{lab.GCSShaped, lab.GCS} {
		if slices.Contains(cfg.stores, st) {
			return st
		}
	}
	return ""
}

// hotSize is the size the hot-pages figures are measured at: 2 GiB when the run has it,
// else its largest size of at least 512 MiB (a smaller snapshot records no list: the
// recorder's window is 64 MiB), else 0.
func hotSize(cfg config) int {
	if slices.Contains(cfg.sizes, 2048) {
		return 2048
	}
	best := 0
	for _, mib := range cfg.sizes {
		if mib >= 512 && mib > best {
			best = mib
		}
	}
	return best
}

// defineHotMetrics defines the rows of measureHot.
func defineHotMetrics(r *Results) {
	const how = "slowinit -hot-percent 10: after the restore it checks every 10th MiB of its memory, in a shuffled order (fixed seed), and prints `hot ok`, then checks the rest (`memory ok`); node cache empty"
	r.define("hot_with", "hot pages first: restore to `hot ok`, first, with the recorded list", "s", "ctr run -> `hot ok`; "+how)
	r.define("hot_without", "hot pages first: restore to `hot ok`, first, hot_frames = false", "s", "the same snapshot through a shim config with hot_frames = false; "+how)
	r.define("hot_memok_with", "  hot pages first: to `memory ok`, with the list", "s", "")
	r.define("hot_memok_without", "  hot pages first: to `memory ok`, hot_frames = false", "s", "")
	r.define("hot_cached", "  hot pages first: restore to `hot ok` from the node cache (every page on the node: what no fetch order can beat)", "s",
		"the same snapshot again once a restore has left it in the node cache; with the list, as the other rows; gVisor's loader still reads in file order")
	r.define("hot_memok_cached", "  hot pages first: to `memory ok`, from the node cache", "s", "")
	r.define("hot_frames", "  hot pages first: frames in the recorded list", "frames", "the shim's `hot frames recorded` (or `kept`) line of the second restore, which used the list of the first and appended what it saw beyond it")
}

// measureHot measures hot pages first in lab l at size mib, cfg.runs times: a cold start
// of the hot-pages workload and its snapshot; a first restore that records the list, a
// second that uses it and appends to it; then,
// the node cache emptied before each, a restore with the list and one through a config
// with hot_frames = false, in alternating order from run to run.
func measureHot(ctx context.Context, rep *report, l *lab.Lab, mib int) error {
	noHot, err := writeConfigWith(l, "podsnapshot-no-hot.toml", "hot_frames", "false")
	if err != nil {
		return err
	}
	command := append(slowinitCommand(mib, rep.cfg.seconds), "-hot-percent", strconv.Itoa(hotPercent))
	labels := []string{lab.AppLabel}
	with, without := shimOptions(l.ShimConfig, labels), shimOptions(noHot, labels)
	for r := 0; r < rep.cfg.runs; r++ {
		logf("%s, %d MiB, hot pages first, run %d/%d: cold start, a restore that records the list, restores with and without it", l.Storage, mib, r+1, rep.cfg.runs)
		prefix := fmt.Sprintf("hot%d-%s-%d", mib, l.Storage, r)
		cold, err := l.Run(ctx, prefix+"-cold", labels, command...)
		if err != nil {
			return fmt.Errorf("hot pages: cold start: %w", err)
		}
		if _, err := coldReady(ctx, l, cold, time.Duration(rep.cfg.seconds*float64(time.Second))+3*time.Minute); err != nil {
			return fmt.Errorf("hot pages: %w", err)
		}
		_, entry, err := awaitCommit(ctx, l, cold)
		if err != nil {
			return fmt.Errorf("hot pages: %w", err)
		}
		uuid := entry.Fields["snapshot"]
		if err := l.Remove(ctx, prefix+"-cold"); err != nil {
			return err
		}
		if err := emptyNodeCache(l); err != nil {
			return err
		}
		from := len(l.Log().Lines())
		if _, _, err := hotRestore(ctx, l, prefix+"-record", with, command, uuid, false, nil); err != nil {
			return fmt.Errorf("hot pages: the recording restore: %w", err)
		}
		frames, err := hotRecorded(ctx, l, from, uuid)
		if err == nil {
			// One restore records about half the hot set (what the loader reached first
			// it read in order); a restore that used the list appends what it saw beyond
			// it. Measure the list as a snapshot's second restore leaves it.
			if err := emptyNodeCache(l); err != nil {
				return err
			}
			from = len(l.Log().Lines())
			_, _, err = hotRestore(ctx, l, prefix+"-learn", with, command, uuid, false, func() error {
				n, err := hotRecorded(ctx, l, from, uuid)
				if err != nil {
					// The first restore's list stands (and is what is measured).
					rep.note(fmt.Sprintf("Hot pages first, %s, %s, run %d: the second restore stored no longer list: %v", storeName(l.Storage), sizeName(mib), r+1, err))
					return nil
				}
				frames = n
				return nil
			})
			if err != nil {
				err = fmt.Errorf("the restore that appends to the list: %w", err)
			}
		}
		if err != nil {
			// A figure missing, not a failed run: the target then says what is missing.
			rep.note(fmt.Sprintf("Hot pages first, %s, %s, run %d: %v", storeName(l.Storage), sizeName(mib), r+1, err))
			logf("  %v", err)
			if _, err := l.CLI(ctx, "rm", "-n", l.Namespace, uuid); err != nil {
				return err
			}
			continue
		}
		rep.res.add("hot_frames", mib, float64(frames))
		order := []bool{true, false}
		if r%2 == 1 {
			order = []bool{false, true}
		}
		for _, useList := range order {
			if err := emptyNodeCache(l); err != nil {
				return err
			}
			opts, key, id := without, "without", prefix+"-without"
			if useList {
				opts, key, id = with, "with", prefix+"-with"
			}
			from := len(l.Log().Lines())
			hot, mem, err := hotRestore(ctx, l, id, opts, command, uuid, false, nil)
			if err != nil {
				return fmt.Errorf("hot pages: the restore %s the list: %w", key, err)
			}
			if used := hotUsed(l, from, uuid); used != useList {
				rep.note(fmt.Sprintf("Hot pages first, %s, %s, run %d: the restore %s the list was left out: the shim's `hot frames first` line was %s",
					storeName(l.Storage), sizeName(mib), r+1, key, map[bool]string{true: "there", false: "missing"}[used]))
				continue
			}
			rep.res.add("hot_"+key, mib, hot.Seconds())
			rep.res.add("hot_memok_"+key, mib, mem.Seconds())
			logf("  %s the list (%d frames): hot ok %.3fs, memory ok %.3fs", key, frames, hot.Seconds(), mem.Seconds())
		}
		// The last restore left the snapshot in the node cache: the bound of the list.
		hot, mem, err := hotRestore(ctx, l, prefix+"-cached", with, command, uuid, true, nil)
		if err != nil {
			return fmt.Errorf("hot pages: the restore from the node cache: %w", err)
		}
		rep.res.add("hot_cached", mib, hot.Seconds())
		rep.res.add("hot_memok_cached", mib, mem.Seconds())
		logf("  from the node cache: hot ok %.3fs, memory ok %.3fs", hot.Seconds(), mem.Seconds())
		if _, err := l.CLI(ctx, "rm", "-n", l.Namespace, uuid); err != nil {
			return err
		}
		if err := emptyNodeCache(l); err != nil {
			return err
		}
	}
	return nil
}

// hotRestore restores snapshot uuid in container id and returns the times from ctr run
// to `hot ok` and to `memory ok`, after the shim has fetched all the pages; it calls
// before (nil: none) while the container still runs, then removes it. cached: the
// restore must come from the node cache instead (nothing is fetched).
func hotRestore(ctx context.Context, l *lab.Lab, id string, opts, command []string, uuid string, cached bool, before func() error) (hot, mem time.Duration, err error) {
	from := len(l.Log().Lines())
	t, err := l.RunWith(ctx, id, opts, command...)
	if err != nil {
		return 0, 0, err
	}
	back, err := l.WaitOutput(ctx, t, 5*time.Minute, `"checkpoint result" line`, func(s string) bool { return strings.HasPrefix(s, "checkpoint result: ") })
	if err != nil {
		return 0, 0, err
	}
	if !strings.HasSuffix(back.Text, ": restore") {
		_, d, _ := l.ShimLine(ctx, time.Second, id, "decision=")
		return 0, 0, fmt.Errorf("the workload read %q: it started cold; the shim said: %s", back.Text, d.Msg)
	}
	if cached {
		_, d, err := l.ShimLine(ctx, 10*time.Second, id, "decision=")
		if err != nil {
			return 0, 0, err
		}
		if streamedDecision(d.Msg) {
			return 0, 0, fmt.Errorf("the restore was to come from the node cache, but it streamed: %s", d.Msg)
		}
	}
	h, err := l.WaitOutput(ctx, t, 5*time.Minute, "hot check", func(s string) bool { return strings.HasPrefix(s, "hot ") })
	if err != nil {
		return 0, 0, err
	}
	if h.Text != "hot ok" {
		return 0, 0, fmt.Errorf("restored memory: %s", h.Text)
	}
	m, err := l.WaitOutput(ctx, t, 5*time.Minute, "memory check", func(s string) bool { return strings.HasPrefix(s, "memory ") })
	if err != nil {
		return 0, 0, err
	}
	if m.Text != "memory ok" {
		return 0, 0, fmt.Errorf("restored memory: %s", m.Text)
	}
	if !cached {
		if _, err := waitFetched(ctx, l, from, 1, uuid); err != nil {
			return 0, 0, err
		}
	}
	if before != nil {
		if err := before(); err != nil {
			return 0, 0, err
		}
	}
	return h.Seen.Sub(t.Invoked), m.Seen.Sub(t.Invoked), l.Remove(ctx, id)
}

// hotRecorded waits for the shim's line saying it stored snapshot uuid's hot-frame list,
// or kept the one it used (among containerd's log lines after the first from), and
// returns the list's frame count.
func hotRecorded(ctx context.Context, l *lab.Lab, from int, uuid string) (int64, error) {
	var frames int64
	i := 0
	_, err := l.Log().Wait(ctx, time.Minute, "the shim's `hot frames recorded` line of "+uuid, func(s string) bool {
		i++
		if i <= from || !strings.Contains(s, "/"+uuid+"/") {
			return false
		}
		if strings.Contains(s, "hot frames recorded") || strings.Contains(s, "hot-frame list") && strings.Contains(s, "kept:") {
			frames = lab.ParseLogEntry(s).Int("hot_frames")
			return true
		}
		return false
	})
	if err != nil {
		return 0, fmt.Errorf("hot pages: no list recorded (is the workload's hot set read out of the loader's order?): %w", err)
	}
	return frames, nil
}

// hotUsed says whether a shim logged `hot frames first` for snapshot uuid after line from.
func hotUsed(l *lab.Lab, from int, uuid string) bool {
	lines := l.Log().Lines()
	for _, s := range lines[min(from, len(lines)):] {
		if strings.Contains(s.Text, "hot frames first") && strings.Contains(s.Text, "/"+uuid+"/") {
			return true
		}
	}
	return false
}

// hotTarget is issue 26's target 5.
func hotTarget(rep *report) target {
	r := rep.res
	t := target{Target: "5. hot pages first: a workload touching 10% of 2 GiB before ready, from the shaped store, reaches ready with the recorded list ≤ 0.6x the time without it"}
	st, mib := hotStore(rep.cfg), hotSize(rep.cfg)
	with, ok1 := median(r, "hot_with", mib)
	without, ok2 := median(r, "hot_without", mib)
	if st == "" || mib == 0 || !ok1 || !ok2 {
		t.Holds = "not measured (the run needs a fake-gcs-server store and a size of at least 512 MiB)"
		return t
	}
	frames, _ := median(r, "hot_frames", mib)
	memWith, _ := median(r, "hot_memok_with", mib)
	memWithout, _ := median(r, "hot_memok_without", mib)
	t.Measured = fmt.Sprintf("%s, %s: `hot ok` %.3f s with the list (%.0f frames) vs %.3f s without = %.2fx; `memory ok` %.3f s vs %.3f s",
		storeName(st), sizeName(mib), with, frames, without, with/without, memWith, memWithout)
	if cached, ok := median(r, "hot_cached", mib); ok {
		t.Measured += fmt.Sprintf("; from the node cache `hot ok` %.3f s = %.2fx the time without the list, the bound of any fetch order", cached, cached/without)
	}
	var v verdict
	v.check(with/without <= 0.6)
	if st != lab.GCSShaped {
		v.miss("the shaped store")
	}
	if mib != 2048 {
		v.miss("2 GiB")
	}
	t.Holds = v.holds()
	return t
}
