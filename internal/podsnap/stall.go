package podsnap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/checkpoint/stream"
	"github.com/podsnapshot/podsnapshot/internal/report"
	"github.com/podsnapshot/podsnapshot/storage"
)

// A store that stalled a restored pod's pages (stream.ErrStalled) did not show the
// snapshot bad, so the snapshot is not marked Failed; but the next pod of the spec on
// this node would resume and stall the same way, and be stopped too. So the node
// remembers the stall, one file per snapshot under <work_dir>/.stalled (named by its
// node cache key), and the next restore of that snapshot from the store first reads the
// frame that stalled, within the lookup's time: answered, the file goes and the pod
// restores; not, the pod starts cold (StorageUnreachable) and says why.

// stallMemory is how long a stall is remembered: after it, the snapshot is tried again
// without a probe (the file is removed then).
const stallMemory = time.Hour

// probeWait bounds the probe of a stalled frame; the lookup's own deadline also holds.
const probeWait = 2 * time.Second

// stall is what the file of a remembered stall holds.
type stall struct {
	Frame int       `json:"frame"`
	At    time.Time `json:"at"`
	Error string    `json:"error"`
}

// stallFile is the file that remembers a stall of m's store on this node.
func (p *Pod) stallFile(m *manifest.Manifest) string {
	return filepath.Join(p.cfg.WorkDir, ".stalled", repo.CacheKey(p.repo.Store.URL(""), m))
}

// rememberStall records that the store stalled on m's pages (err wraps a
// *stream.StallError); other errors are not remembered.
func (p *Pod) rememberStall(ctx context.Context, m *manifest.Manifest, err error) {
	var se *stream.StallError
	if !errors.As(err, &se) {
		return
	}
	data, _ := json.Marshal(stall{Frame: se.Frame, At: time.Now().UTC(), Error: err.Error()})
	path := p.stallFile(m)
	if werr := os.MkdirAll(filepath.Dir(path), 0o700); werr == nil {
		werr = os.WriteFile(path, data, 0o600)
		if werr == nil {
			return
		}
	}
	log.G(ctx).Warnf("podsnapshot: the stall of snapshot %s/%s is not remembered at %s: the next pod on this node may stall the same way", m.Namespace, m.UUID, path)
}

// probeStall checks, before a restore of m from the store, that a stall this node
// remembers of it is over: it reads the frame that stalled within probeWait (and ctx).
// It returns ok when nothing is remembered or the store answered, else why the pod
// starts cold and the reason (report.Reason*): StorageUnreachable, or Corrupt when the
// frame came back bad (the snapshot is then marked Failed).
func (p *Pod) probeStall(ctx context.Context, m *manifest.Manifest) (why, reason string, ok bool) {
	path := p.stallFile(m)
	data, err := os.ReadFile(path)
	if err != nil {
		return "", "", true
	}
	var s stall
	if json.Unmarshal(data, &s) != nil || time.Since(s.At) > stallMemory {
		os.Remove(path)
		return "", "", true
	}
	pctx, cancel := context.WithTimeout(ctx, probeWait)
	defer cancel()
	t0 := time.Now()
	if err := p.repo.ProbePages(pctx, m, s.Frame); err != nil {
		if errors.Is(err, storage.ErrCorrupt) { // marked failed by ProbePages
			os.Remove(path)
			p.reportSnapshotFailed(ctx, m, err)
			return err.Error(), report.ReasonCorrupt, false
		}
		return fmt.Sprintf("the store stalled reading snapshot %s/%s at %s (%s) and still does not deliver frame %d (probe: %v after %d ms)",
			m.Namespace, m.UUID, s.At.Format(time.RFC3339), s.Error, s.Frame, err, time.Since(t0).Milliseconds()), report.ReasonStorageUnreachable, false
	}
	os.Remove(path)
	log.G(ctx).Infof("podsnapshot: the store delivers frame %d of snapshot %s/%s again (it stalled at %s)", s.Frame, m.Namespace, m.UUID, s.At.Format(time.RFC3339))
	return "", "", true
}
