package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
	"github.com/podsnapshot/podsnapshot/internal/testenv/ociarchive"
)

// app is a real program (-workload redis|python|nginx|torch): its image runs a program
// (testdata/workloads; torch: internal/testenv/workloads/torch) that prints a ready line
// once it is ready, then checkpoints the sandbox and prints "checkpoint result:
// resume|restore|error".
type app struct {
	ready string // prefix of the ready line
	// check inspects the restored copy and returns what it found, or an error.
	check func(ctx context.Context, l *lab.Lab, warm *lab.Task) (string, error)
}

var apps = map[string]app{
	"redis": {ready: "ready ", check: func(ctx context.Context, l *lab.Lab, warm *lab.Task) (string, error) {
		var got []string
		for _, q := range [][]string{{"DBSIZE"}, {"GET", "key:123456"}, {"SET", "after-restore", "1"}} {
			out, err := l.Ctr(ctx, append([]string{"task", "exec", "--exec-id", "check" + q[0], warm.ID, "redis-cli"}, q...)...)
			if err != nil {
				return "", err
			}
			got = append(got, strings.Join(q, " ")+" = "+strings.TrimSpace(out))
		}
		if got[0] != "DBSIZE = 1000000" || got[1] != "GET key:123456 = value:123456" || got[2] != "SET after-restore 1 = OK" {
			return "", fmt.Errorf("restored redis: %s", strings.Join(got, "; "))
		}
		return "redis-cli " + strings.Join(got, "; "), nil
	}},
	"python": {ready: "ready ", check: func(ctx context.Context, l *lab.Lab, warm *lab.Task) (string, error) {
		v, err := l.WaitOutput(ctx, warm, time.Minute, "verify line", func(s string) bool { return strings.Contains(s, "verify ") })
		if err != nil {
			return "", err
		}
		text := strings.TrimLeft(v.Text, "\x00")
		if !strings.HasPrefix(text, "verify ok") {
			return "", fmt.Errorf("restored python: %s", text)
		}
		return "bigstate.py: " + text, nil
	}},
	"nginx": {ready: "ready ", check: func(ctx context.Context, l *lab.Lab, warm *lab.Task) (string, error) {
		page, err := l.Ctr(ctx, "task", "exec", "--exec-id", "wget", warm.ID, "wget", "-qO-", "http://127.0.0.1/")
		if err != nil {
			return "", err
		}
		ps, err := l.Ctr(ctx, "task", "exec", "--exec-id", "ps", warm.ID, "ps", "-o", "args")
		if err != nil {
			return "", err
		}
		workers := strings.Count(ps, "nginx: worker process")
		if !strings.Contains(page, "podsnapshot nginx workload") || workers != 4 {
			return "", fmt.Errorf("restored nginx: page %q, %d workers", page, workers)
		}
		first, _, _ := strings.Cut(page, "\n")
		return fmt.Sprintf("wget http://127.0.0.1/ = %q; master and %d workers", first, workers), nil
	}},
	// torch: the model server answers its first request after the restore from the
	// restored model, and says whether the output equals its warm-up before the
	// checkpoint.
	"torch": {ready: "ready ", check: func(ctx context.Context, l *lab.Lab, warm *lab.Task) (string, error) {
		url := fmt.Sprintf("http://127.0.0.1:%d/infer", ociarchive.TorchPort)
		reply, err := l.Ctr(ctx, "task", "exec", "--exec-id", "infer", warm.ID, "wget", "-qO-", url)
		if err != nil {
			return "", err
		}
		out := warm.Output.Text()
		if !strings.Contains(reply, "\nrequest=1 warmup_match=yes ") || strings.Contains(out, "warmup ") {
			return "", fmt.Errorf("restored torch server: GET /infer answered %q; its output:\n%s", reply, out)
		}
		return "GET /infer (first request) = " + strings.ReplaceAll(strings.TrimSpace(reply), "\n", "; "), nil
	}},
}

// measureApp is measure for a real program: cold start to its ready line, the snapshot,
// then the restore to "checkpoint result: restore", and the program's check.
func measureApp(ctx context.Context, l *lab.Lab, cfg config, res *result) error {
	a := apps[cfg.workload]
	labels := []string{lab.AppLabel}
	coldID, warmID := cfg.workload+"-cold", cfg.workload+"-restored"

	logf("cold start: %s (the image's command)", l.Image)
	cold, err := l.Run(ctx, coldID, labels)
	if err != nil {
		return fmt.Errorf("cold start: %w", err)
	}
	res.coldCtrRun = cold.Returned.Sub(cold.Invoked)
	ready, err := l.WaitOutput(ctx, cold, 5*time.Minute, "ready line", func(s string) bool { return strings.HasPrefix(s, a.ready) })
	if err != nil {
		return fmt.Errorf("cold start: %w", err)
	}
	res.coldToReady = ready.Seen.Sub(cold.Invoked)
	logf("%s after %v; the wrapper triggers the checkpoint now", ready.Text, res.coldToReady.Round(time.Millisecond))

	committed, _, err := waitCommitted(ctx, l, cold, coldID, res)
	if err != nil {
		return err
	}
	res.triggerToCommitted = committed.Seen.Sub(ready.Seen)
	logf("snapshot %s committed %v after the ready line", res.snapshot, res.triggerToCommitted.Round(time.Millisecond))

	warm, back, err := runAgain(ctx, l, res, coldID, warmID, labels)
	if err != nil {
		return err
	}
	res.restoreToReady = back.Seen.Sub(warm.Invoked)
	logf("restored and ready after %v", res.restoreToReady.Round(time.Millisecond))
	if res.restoredOutput, err = a.check(ctx, l, warm); err != nil {
		return err
	}
	logf("%s", res.restoredOutput)
	if line, _, err := l.ShimLine(ctx, 10*time.Second, warmID, "podsnapshot: restored"); err == nil {
		if m := regexp.MustCompile(`in \d+ ms \(.*\)`).FindString(lab.ParseLogEntry(line.Text).Msg); m != "" {
			res.shimRestore = m
		}
	}
	if res.ls, err = l.CLI(ctx, "ls", "-n", l.Namespace, "-o", "wide"); err != nil {
		return err
	}
	return l.Remove(ctx, warmID)
}
