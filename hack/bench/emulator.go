package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/podsnapshot/podsnapshot/checkpoint/stream"
	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
	"github.com/podsnapshot/podsnapshot/storage"
)

// emulatorCeiling measures fake-gcs-server by itself, with none of our code: one
// single-request upload (JSON API, uploadType=media) of the file at path, then one
// download of it (alt=media) into io.Discard. It returns both rates in MB/s; the object
// is deleted afterwards. It is a scale for the shim's figures, not a bound: the shim
// uploads parts in parallel and composes them (the emulator copies them again), and
// reads ranges in parallel.
func emulatorCeiling(ctx context.Context, l *lab.Lab, path string) (upMBps, downMBps float64, err error) {
	up, down, _, err := storeCeiling(ctx, l.GCSHost, path, false)
	return up, down, err
}

// storeCeiling is emulatorCeiling against the bucket at host (fake-gcs-server or the
// shaped proxy in front of it); with ranged, also the download as the shim's stream
// fetches pages.img: parallel ranged reads (parDownMBps, else 0).
func storeCeiling(ctx context.Context, host, path string, ranged bool) (upMBps, downMBps, parDownMBps float64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, 0, err
	}
	name := "bench-ceiling/" + fmt.Sprint(time.Now().UnixNano())
	base := "http://" + host
	up := fmt.Sprintf("%s/upload/storage/v1/b/%s/o?uploadType=media&name=%s", base, lab.Bucket, url.QueryEscape(name))
	obj := fmt.Sprintf("%s/storage/v1/b/%s/o/%s", base, lab.Bucket, url.PathEscape(name))
	defer func() {
		if req, e := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodDelete, obj, nil); e == nil {
			if resp, e := http.DefaultClient.Do(req); e == nil {
				resp.Body.Close()
			}
		}
	}()

	t0 := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, up, f)
	if err != nil {
		return 0, 0, 0, err
	}
	req.ContentLength = fi.Size()
	req.Header.Set("Content-Type", "application/octet-stream")
	if err := do(req, io.Discard); err != nil {
		return 0, 0, 0, fmt.Errorf("upload to fake-gcs-server: %w", err)
	}
	upMBps = float64(fi.Size()) / 1e6 / time.Since(t0).Seconds()

	t0 = time.Now()
	req, err = http.NewRequestWithContext(ctx, http.MethodGet, obj+"?alt=media", nil)
	if err != nil {
		return 0, 0, 0, err
	}
	cw := &countWriter{}
	if err := do(req, cw); err != nil {
		return 0, 0, 0, fmt.Errorf("download from fake-gcs-server: %w", err)
	}
	if cw.n != fi.Size() {
		return 0, 0, 0, fmt.Errorf("download from fake-gcs-server: %d bytes, want %d", cw.n, fi.Size())
	}
	downMBps = float64(fi.Size()) / 1e6 / time.Since(t0).Seconds()
	if ranged {
		if parDownMBps, err = rangedDownload(ctx, obj+"?alt=media", fi.Size()); err != nil {
			return 0, 0, 0, err
		}
	}
	return upMBps, downMBps, parDownMBps, nil
}

// do sends req and copies a 200 response's body to w.
func do(req *http.Request, w io.Writer) error {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

// The shim's stream fetches pages.img as rangeWorkers ranged reads at once, each of
// rangeFrames frames of storage.DefaultFrameSize raw bytes (stream.FillWorkers,
// stream.FillBatch); the slowinit pages are incompressible, so a stored frame is about
// its raw size and a read about rangeFrames * DefaultFrameSize bytes.
const (
	rangeWorkers = stream.FillWorkers
	rangeFrames  = stream.FillBatch
	rangeBytes   = rangeFrames * storage.DefaultFrameSize
)

// rangedDownload reads the size bytes at url (alt=media) as the shim's stream does:
// rangeWorkers requests at once, each for the next rangeBytes not yet taken, until the
// end; it returns the rate in MB/s. A response other than 206 with the bytes asked for
// is an error.
func rangedDownload(ctx context.Context, url string, size int64) (float64, error) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: rangeWorkers, DisableCompression: true}}
	defer client.CloseIdleConnections()
	var next atomic.Int64 // the offset of the next range to take
	g, ctx := errgroup.WithContext(ctx)
	t0 := time.Now()
	for range rangeWorkers {
		g.Go(func() error {
			for {
				off := next.Add(rangeBytes) - rangeBytes
				if off >= size {
					return nil
				}
				end := min(off+rangeBytes, size) - 1
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				if err != nil {
					return err
				}
				req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end))
				resp, err := client.Do(req)
				if err != nil {
					return fmt.Errorf("ranged read %d-%d: %w", off, end, err)
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && (resp.StatusCode != http.StatusPartialContent || n != end-off+1) {
					err = fmt.Errorf("%s, %d bytes, want 206 and %d", resp.Status, n, end-off+1)
				}
				if err != nil {
					return fmt.Errorf("ranged read %d-%d: %w", off, end, err)
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return float64(size) / 1e6 / time.Since(t0).Seconds(), nil
}

// storeAlone measures the run's bucket store st by itself before a shim cycle at size
// mib, on the floor's pages.img, and records it: fake-gcs-server's one-request upload and
// download (emulator_*), or the shaped store's one-request upload and download and its
// parallel ranged download (shaped_*). It returns the download rate that serves the
// snapshot in the serve row (MB/s): the one request for the emulator, the ranged reads
// for the shaped store, whose per-connection limit makes one request a poor scale.
func storeAlone(ctx context.Context, rep *report, l *lab.Lab, mib int, img *rawImage) (float64, error) {
	pages := filepath.Join(img.dir, "pages.img")
	res := rep.res
	if l.Storage != lab.GCSShaped {
		up, down, err := emulatorCeiling(ctx, l, pages)
		if err != nil {
			return 0, fmt.Errorf("fake-gcs-server alone, %d MiB: %w", mib, err)
		}
		res.add("emulator_up_mbps", mib, up)
		res.add("emulator_down_mbps", mib, down)
		logf("  fake-gcs-server alone: upload %.0f MB/s, download %.0f MB/s (one request each)", up, down)
		return down, nil
	}
	up, down, par, err := storeCeiling(ctx, l.StoreHost, pages, true)
	if err != nil {
		return 0, fmt.Errorf("shaped store alone, %d MiB: %w", mib, err)
	}
	res.add("shaped_up_mbps", mib, up)
	res.add("shaped_down_mbps", mib, down)
	res.add("shaped_par_down_mbps", mib, par)
	logf("  shaped store alone: upload %.0f MB/s, download %.0f MB/s (one request each), %d ranged reads of %d MiB at once %.0f MB/s",
		up, down, rangeWorkers, rangeBytes>>20, par)
	return par, nil
}

// serveKey is the row of the store's own time to serve a snapshot's stored bytes.
func serveKey(st lab.Storage) string {
	if st == lab.GCSShaped {
		return "shaped_serve_s"
	}
	return "emulator_serve_s"
}
