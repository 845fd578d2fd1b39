package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
)

// emulatorCeiling measures fake-gcs-server by itself, with none of our code: one
// single-request upload (JSON API, uploadType=media) of the file at path, then one
// download of it (alt=media) into io.Discard. It returns both rates in MB/s; the object
// is deleted afterwards. It is a scale for the shim's figures, not a bound: the shim
// uploads parts in parallel and composes them (the emulator copies them again), and
// reads ranges in parallel.
func emulatorCeiling(ctx context.Context, l *lab.Lab, path string) (upMBps, downMBps float64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	name := "bench-ceiling/" + fmt.Sprint(time.Now().UnixNano())
	base := "http://" + l.GCSHost
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
		return 0, 0, err
	}
	req.ContentLength = fi.Size()
	req.Header.Set("Content-Type", "application/octet-stream")
	if err := do(req, io.Discard); err != nil {
		return 0, 0, fmt.Errorf("upload to fake-gcs-server: %w", err)
	}
	upMBps = float64(fi.Size()) / 1e6 / time.Since(t0).Seconds()

	t0 = time.Now()
	req, err = http.NewRequestWithContext(ctx, http.MethodGet, obj+"?alt=media", nil)
	if err != nil {
		return 0, 0, err
	}
	cw := &countWriter{}
	if err := do(req, cw); err != nil {
		return 0, 0, fmt.Errorf("download from fake-gcs-server: %w", err)
	}
	if cw.n != fi.Size() {
		return 0, 0, fmt.Errorf("download from fake-gcs-server: %d bytes, want %d", cw.n, fi.Size())
	}
	downMBps = float64(fi.Size()) / 1e6 / time.Since(t0).Seconds()
	return upMBps, downMBps, nil
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
