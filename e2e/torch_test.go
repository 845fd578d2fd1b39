package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/e2e/harness"
	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
)

// A real model server: Debian's python3-torch (CPU) serving a model of 16 Linear layers
// with 1 GiB of weights (ociarchive.TorchImage; the program is
// internal/testenv/workloads/torch/torchserve.py). It imports torch, loads the weights,
// runs a warm-up inference, serves GET /infer on 127.0.0.1:8000 and checkpoints itself.
// The restored copy never loads the model again, and its first request answers exactly
// what the warm-up computed before the checkpoint.

var (
	torchWarmupRe = regexp.MustCompile(`warmup (sum=\S+ first=\S+ sha256=\w+) infer_ms=(\S+)`)
	torchReplyRe  = regexp.MustCompile(`^(sum=\S+ first=\S+ sha256=\w+)\nrequest=(\d+) warmup_match=(\w+) infer_ms=(\S+)\n$`)
)

func TestTorch(t *testing.T) {
	img := appImage(t, "torch")
	if img.Name != ociarchive.TorchImage {
		t.Fatalf("image name %s, want %s", img.Name, ociarchive.TorchImage)
	}
	e := newEnv(t, localStore)
	begin := time.Now()
	e.cd.MustCtr(t, harness.ImportArgs(img.Archive)...)
	t.Logf("image %s (%s) imported in %.1fs", img.Name, img.Digest, time.Since(begin).Seconds())
	config := e.appConfig() // network=none: the sandbox's own loopback for 127.0.0.1:8000

	// Cold start: import, load, warm-up inference, serve, checkpoint.
	begin = time.Now()
	coldLog := e.startApp(config, img, "cold")
	out := waitApp(t, coldLog, "warmup ", 5*time.Minute)
	coldToInference := time.Since(begin)
	out = waitApp(t, coldLog, "ready layers=", time.Minute)
	coldToReady := time.Since(begin)
	m := torchWarmupRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no warm-up line in the cold start:\n%s", out)
	}
	warmup := m[1]
	out = waitApp(t, coldLog, "checkpoint result: ", 5*time.Minute)
	if !strings.Contains(out, "checkpoint result: resume") {
		t.Fatalf("the cold start's checkpoint did not succeed:\n%s", out)
	}
	snap := e.committedWithin("cold", 5*time.Minute) // over 1 GiB to store

	// The saved copy goes on serving the same model.
	if reply := torchInfer(t, e, "cold", "infer-cold"); reply[1] != warmup {
		t.Fatalf("the cold copy after its checkpoint answers %q, its warm-up was %q", reply[1], warmup)
	}
	e.remove("cold")

	// The same spec again: restored, and the first request answers what the warm-up
	// computed before the checkpoint.
	begin = time.Now()
	warmLog := e.startApp(config, img, "warm")
	waitApp(t, warmLog, "checkpoint result: restore", 5*time.Minute)
	restoreToResult := time.Since(begin)
	reply := torchInfer(t, e, "warm", "infer-warm")
	restoreToInference := time.Since(begin)
	if reply[1] != warmup || reply[2] != "1" || reply[3] != "yes" {
		t.Fatalf("first request after restore: %q (request %s, warmup_match=%s); the warm-up before the checkpoint: %q",
			reply[1], reply[2], reply[3], warmup)
	}
	restored := printable(readFile(warmLog))
	if strings.Contains(restored, "warmup ") || strings.Contains(restored, "ready layers=") {
		t.Fatalf("the restored copy loaded the model again:\n%s", restored)
	}
	if d := e.decision("warm"); !strings.Contains(d, "decision=restore") || !strings.Contains(d, snap.UUID) {
		t.Fatalf("decision for the second run: %s", d)
	}

	var raw, stored int64
	for _, f := range snap.Files {
		raw, stored = raw+f.RawSize, stored+f.StoredSize
	}
	ready, _, _ := strings.Cut(out[strings.Index(out, "ready layers="):], "\n")
	t.Logf("workload=torch store=local cold-start-to-first-inference=%.2fs cold-start-to-ready=%.2fs restore-to-checkpoint-result=%.2fs "+
		"restore-to-first-inference=%.2fs first-inference-after-restore=%sms warmup-inference=%sms snapshot-raw=%.1fMiB stored=%.1fMiB (%s)",
		coldToInference.Seconds(), coldToReady.Seconds(), restoreToResult.Seconds(), restoreToInference.Seconds(),
		reply[4], m[2], float64(raw)/(1<<20), float64(stored)/(1<<20), ready)
}

// torchInfer asks the model server in task id for an inference (GET /infer with busybox
// wget inside the sandbox) and returns the reply's parts: digest, request number,
// warmup_match and infer_ms.
func torchInfer(t *testing.T, e *env, id, execID string) []string {
	t.Helper()
	url := fmt.Sprintf("http://127.0.0.1:%d/infer", ociarchive.TorchPort)
	res := e.cd.Ctr(t, "task", "exec", "--exec-id", execID, id, "wget", "-qO-", url)
	if res.ExitCode != 0 {
		t.Fatalf("GET /infer in %s: %s", id, res)
	}
	m := torchReplyRe.FindStringSubmatch(res.Stdout)
	if m == nil {
		t.Fatalf("GET /infer in %s answered %q", id, res.Stdout)
	}
	return m
}
