package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
)

// defineTorchFloorMetrics defines the rows of measureTorchFloor.
func defineTorchFloorMetrics(r *Results) {
	const how = "raw runsc, no shim, no containerd: `runsc run` of the torch image's root filesystem and the compiled server's command, with the image's environment, the lab's runsc flags (network none) and the workload-trigger annotations the shim sets (uncompressed image, resume); after its own checkpoint, `runsc create` + `runsc restore --background` from the image in the page cache, then `runsc exec` of `wget -qO- /infer` in the sandbox until it answers with the warm-up's output"
	r.define("torch_compiled_floor", "torch compiled: raw runsc restore to first inference", "s", how)
	r.define("torch_compiled_floor_direct", "torch compiled: raw runsc restore --direct to first inference", "s", "as the row above, with --direct (the image read with O_DIRECT)")
}

// measureTorchFloor measures gVisor's own restore of the compiled model server in lab l
// (its app the torch image), runs times: one checkpoint, then a restore without and one
// with --direct, alternating which goes first.
func measureTorchFloor(ctx context.Context, rep *report, l *lab.Lab, images string) error {
	raw, err := newRawRunsc(l, images)
	if err != nil {
		return err
	}
	spec, err := ociarchive.AppSpec("torch", ociarchive.DefaultBusybox, l.Repo)
	if err != nil {
		return err
	}
	raw.env, raw.flags = spec.Env, []string{"--network=none"}
	command := ociarchive.TorchCommand(ociarchive.TorchCompiled)
	for r := 0; r < rep.cfg.runs; r++ {
		logf("torch compiled, raw runsc, run %d/%d: cold start, its own checkpoint, restores with and without --direct", r+1, rep.cfg.runs)
		// The compiled server's warm-up takes about a minute on 2 cores.
		img, err := raw.checkpoint(ctx, "torch", 10*60, command)
		if err != nil {
			return fmt.Errorf("torch floor: %w", err)
		}
		for i, direct := range []bool{r%2 == 1, r%2 == 0} {
			took, err := raw.torchRestore(ctx, img, direct)
			if err != nil {
				return fmt.Errorf("torch floor, restore %d: %w", i+1, err)
			}
			key := "torch_compiled_floor"
			if direct {
				key += "_direct"
			}
			rep.res.add(key, 0, took.Seconds())
			logf("  restore (direct %v) to first inference %.2fs", direct, took.Seconds())
		}
		if err := os.RemoveAll(img.dir); err != nil {
			return err
		}
	}
	return nil
}

// torchRestore restores the model server's image img (page cache warm) and returns the
// time from `runsc create` to the first inference answered from inside the sandbox,
// which must be the warm-up's.
func (r *rawRunsc) torchRestore(ctx context.Context, img *rawImage, direct bool) (time.Duration, error) {
	rs, err := r.startRestore(ctx, "torch-restore", img, img.dir, pagesRead{direct: direct})
	if err != nil {
		return 0, err
	}
	defer rs.end()
	b, id, t0 := rs.bundle, rs.id, rs.started
	// As the shim's cycle asks (ctr task exec): one request once the restore is done.
	url := fmt.Sprintf("http://127.0.0.1:%d/infer", ociarchive.TorchPort)
	cmd := r.command(ctx, b, nil, "exec", id, "wget", "-qO-", url)
	reply, err := cmd.CombinedOutput()
	took := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("runsc exec wget /infer: %v: %s%s", err, reply, lastLogError(filepath.Join(b, "runsc.log")))
	}
	if !strings.Contains(string(reply), "\nrequest=1 warmup_match=yes ") {
		return 0, fmt.Errorf("GET /infer answered %q, not the warm-up's output", reply)
	}
	return took, nil
}
