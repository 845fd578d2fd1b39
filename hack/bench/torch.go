package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
)

// torchRun is one cycle of the torch model server (ociarchive.TorchImage: Debian's
// python3-torch, 1 GiB of weights): cold start, its snapshot, and a restore, each to its
// first inference.
type torchRun struct {
	coldToInference    time.Duration // ctr run invoked -> the warm-up inference's line
	restoreToInference time.Duration // ctr run invoked -> the first GET /infer answered
	rawBytes           int64         // the snapshot's raw and stored bytes (committed line)
	storedBytes        int64
	ready              string // the server's "ready ..." line (its own timings)
}

// measureTorch runs the torch model server in its own lab on the local store, once with
// the shim's defaults and once with exclude_zero_pages = true, and records both; then
// the compiled server (ociarchive.TorchCompiled: TorchScript and a warm-up per batch
// size, the start-up work of a real inference server) with the defaults.
func measureTorch(ctx context.Context, rep *report) (err error) {
	l, err := lab.Start(ctx, lab.Options{Storage: lab.Local, Namespace: "bench", Logf: logf})
	if err != nil {
		return fmt.Errorf("set up the torch lab: %w", err)
	}
	defer func() {
		logf("cleaning up the torch lab")
		cr := l.Close()
		logf("cleanup: %s", cr)
		if err == nil && !cr.Clean() {
			err = fmt.Errorf("cleanup incomplete: %s", cr)
		}
	}()
	if err := l.UseApp(ctx, "torch"); err != nil {
		return err
	}
	zeroConfig, err := writeConfigWith(l, "podsnapshot-zero-pages.toml", "exclude_zero_pages", "true")
	if err != nil {
		return err
	}
	for i, c := range []struct{ suffix, config string }{{"", l.ShimConfig}, {"_zero", zeroConfig}} {
		for r := 0; r < rep.cfg.runs; r++ {
			logf("torch, exclude_zero_pages = %v, run %d/%d: cold start, checkpoint, restore", i == 1, r+1, rep.cfg.runs)
			t, err := torchCycle(ctx, l, c.config, fmt.Sprintf("torch%d-%d", i, r), nil)
			if err != nil {
				return fmt.Errorf("torch, exclude_zero_pages = %v, run %d: %w", i == 1, r+1, err)
			}
			res := rep.res
			if i == 0 {
				res.add("torch_cold", 0, t.coldToInference.Seconds())
				res.add("torch_restore", 0, t.restoreToInference.Seconds())
				res.add("torch_ratio", 0, t.coldToInference.Seconds()/t.restoreToInference.Seconds())
			}
			res.add("torch_raw_mb"+c.suffix, 0, float64(t.rawBytes)/1e6)
			res.add("torch_stored_mb"+c.suffix, 0, float64(t.storedBytes)/1e6)
			logf("  cold start to first inference %.2fs, restore to first inference %.2fs (%.1fx); snapshot %.1f MB raw, %.1f MB stored",
				t.coldToInference.Seconds(), t.restoreToInference.Seconds(), t.coldToInference.Seconds()/t.restoreToInference.Seconds(),
				float64(t.rawBytes)/1e6, float64(t.storedBytes)/1e6)
		}
	}
	for r := 0; r < rep.cfg.runs; r++ {
		logf("torch compiled (%s), run %d/%d: cold start, checkpoint, restore", ociarchive.TorchCompiled, r+1, rep.cfg.runs)
		t, err := torchCycle(ctx, l, l.ShimConfig, fmt.Sprintf("torchc-%d", r), ociarchive.TorchCommand(ociarchive.TorchCompiled))
		if err != nil {
			return fmt.Errorf("torch compiled, run %d: %w", r+1, err)
		}
		cold, warm := t.coldToInference.Seconds(), t.restoreToInference.Seconds()
		rep.res.add("torch_compiled_cold", 0, cold)
		rep.res.add("torch_compiled_restore", 0, warm)
		rep.res.add("torch_compiled_ratio", 0, cold/warm)
		logf("  cold start to first inference %.2fs, restore to first inference %.2fs (%.1fx); snapshot %.1f MB raw, %.1f MB stored; server: %s",
			cold, warm, cold/warm, float64(t.rawBytes)/1e6, float64(t.storedBytes)/1e6, t.ready)
	}
	return measureTorchFloor(ctx, rep, l, rep.images)
}

// torchCycle cold-starts the model server with shim config cfg and command (nil: the
// image's), waits for its snapshot, restores it once from the local store (node cache
// empty; the same command, as a pod's spec is the same) and asks it for an inference,
// which must equal the warm-up before the checkpoint; then deletes the snapshot and
// empties the node cache.
func torchCycle(ctx context.Context, l *lab.Lab, cfg, prefix string, command []string) (*torchRun, error) {
	opts := shimOptions(cfg, []string{lab.AppLabel})
	t := &torchRun{}
	coldID, warmID := prefix+"-cold", prefix+"-restored"
	cold, err := l.RunWith(ctx, coldID, opts, command...)
	if err != nil {
		return nil, fmt.Errorf("cold start: %w", err)
	}
	// 10 minutes: the compiled server's warm-up takes about a minute on 2 cores.
	warmup, err := l.WaitOutput(ctx, cold, 10*time.Minute, "warm-up inference", func(s string) bool { return strings.HasPrefix(s, "warmup ") })
	if err != nil {
		return nil, fmt.Errorf("cold start: %w", err)
	}
	t.coldToInference = warmup.Seen.Sub(cold.Invoked)
	ready, err := l.WaitOutput(ctx, cold, time.Minute, `"ready" line`, func(s string) bool { return strings.HasPrefix(s, "ready ") })
	if err != nil {
		return nil, fmt.Errorf("cold start: %w", err)
	}
	t.ready = strings.TrimPrefix(ready.Text, "ready ")
	_, entry, err := l.ShimLine(ctx, 5*time.Minute, coldID, "podsnapshot: committed")
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	uuid := entry.Fields["snapshot"]
	t.rawBytes, t.storedBytes = entry.Int("raw_bytes"), entry.Int("stored_bytes")
	if uuid == "" || t.rawBytes <= 0 || t.storedBytes <= 0 {
		return nil, fmt.Errorf("checkpoint: no snapshot, raw_bytes, stored_bytes in the shim's committed line")
	}
	if err := l.Remove(ctx, coldID); err != nil {
		return nil, err
	}
	if err := emptyNodeCache(l); err != nil {
		return nil, err
	}

	warm, err := l.RunWith(ctx, warmID, opts, command...)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	back, err := l.WaitOutput(ctx, warm, 5*time.Minute, `"checkpoint result" line`, func(s string) bool { return strings.HasPrefix(s, "checkpoint result: ") })
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if !strings.HasSuffix(back.Text, ": restore") {
		_, d, _ := l.ShimLine(ctx, time.Second, warmID, "decision=")
		return nil, fmt.Errorf("restore: the workload read %q: it started cold; the shim said: %s", back.Text, d.Msg)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/infer", ociarchive.TorchPort)
	reply, err := l.Ctr(ctx, "task", "exec", "--exec-id", "infer", warmID, "wget", "-qO-", url)
	if err != nil {
		return nil, fmt.Errorf("restore: GET /infer: %w", err)
	}
	t.restoreToInference = time.Since(warm.Invoked)
	if !strings.Contains(reply, "\nrequest=1 warmup_match=yes ") {
		return nil, fmt.Errorf("restore: GET /infer answered %q, not the warm-up's output", reply)
	}
	if err := l.Remove(ctx, warmID); err != nil {
		return nil, err
	}
	if _, err := l.CLI(ctx, "rm", "-n", l.Namespace, uuid); err != nil {
		return nil, err
	}
	return t, emptyNodeCache(l)
}
