package podsnap

import (
	"context"
	"errors"
	"testing"
)

// TestExcludeZeroPagesAnnotation: config exclude_zero_pages reaches gVisor's workload
// trigger as the sandbox's annotation exclude-committed-zero-pages (gVisor's
// runsc/boot/restore.go reads it at the save, from the sandbox's spec), "false" by
// default, and the cold start after a failed restore writes it again.
func TestExcludeZeroPagesAnnotation(t *testing.T) {
	// The name gVisor reads; a typo here would silently save every zero page.
	if annCheckpointExcludeZeroPages != "dev.gvisor.internal.checkpoint.exclude-committed-zero-pages" {
		t.Fatalf("annotation name %q", annCheckpointExcludeZeroPages)
	}
	for _, tc := range []struct {
		name    string
		exclude bool
		want    string
	}{
		{"default", false, "false"},
		{"on", true, "true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, "workload", "resume")
			e.cfg.ExcludeZeroPages = tc.exclude
			p, sb := e.plan("sb1", "pod-sb1")
			if p == nil || p.Restores() {
				t.Fatalf("want a cold start under the workload policy, got %+v", p)
			}
			if got := sb.annots[annCheckpointExcludeZeroPages]; got != tc.want {
				t.Fatalf("exclude-committed-zero-pages = %q, want %q (annotations %v)", got, tc.want, sb.annots)
			}
			if sb.annots[annCheckpointEnable] != "true" || sb.annots[annCheckpointCompression] != "none" {
				t.Fatalf("the other trigger annotations changed: %v", sb.annots)
			}
		})
	}

	t.Run("cold start after a failed restore", func(t *testing.T) {
		e := newEnv(t, "workload", "resume")
		e.cfg.ExcludeZeroPages = true
		checkpointWorkload(t, e, "sb1")
		p, sb := e.plan("sb2", "pod-sb2")
		if sb.annots != nil {
			t.Fatalf("a restoring pod got trigger annotations %v", sb.annots)
		}
		sb.fail["restore"] = errors.New("runsc restore: boom")
		must(t, p.Start(context.Background(), sb))
		if got := sb.annots[annCheckpointExcludeZeroPages]; got != "true" {
			t.Fatalf("after the cold re-create exclude-committed-zero-pages = %q (annotations %v)", got, sb.annots)
		}
	})
}
