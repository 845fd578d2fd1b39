package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/internal/podsnap"
	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
	"github.com/podsnapshot/podsnapshot/storage"
	_ "github.com/podsnapshot/podsnapshot/storage/gcs"   // gs:// for storage.Open
	_ "github.com/podsnapshot/podsnapshot/storage/local" // file://
)

// uploadAlone measures the upload part of a commit by itself, with no sandbox and no
// shim: repo.Commit of the image directory dir (checkpoint.img, pages_meta.img and
// pages.img as `runsc checkpoint` wrote them) into the lab's store from this process,
// with the shim's codec, ratio threshold and part size (podsnap.CommitRepo,
// podsnap.StoreOptions). The files are read from the page cache, as the shim reads an
// image runsc has just written. The snapshot is deleted afterwards. It returns the time Commit took (compress, upload, verify, index marker
// and manifest).
func uploadAlone(ctx context.Context, l *lab.Lab, dir string) (time.Duration, error) {
	if l.GCSHost != "" {
		// As the shim finds it in containerd's environment (lab.Start): the Cloud
		// Storage client then talks to the emulator without credentials.
		if err := os.Setenv("STORAGE_EMULATOR_HOST", l.GCSHost); err != nil {
			return 0, err
		}
	}
	st, err := storage.Open(ctx, l.StoreURL, podsnap.StoreOptions()...)
	if err != nil {
		return 0, fmt.Errorf("open the lab's store %s: %w", l.StoreURL, err)
	}
	defer st.Close()
	r := podsnap.CommitRepo(st)
	// A key and a tuple that pass the manifest's validation, and match no pod.
	key := sha256.Sum256([]byte(fmt.Sprintf("upload-alone-%d", time.Now().UnixNano())))
	m := manifest.New("bench-floor", "upload-alone", hex.EncodeToString(key[:]),
		compat.Tuple{RunscVersion: "bench-upload-alone", Arch: runtime.GOARCH}, time.Now())
	t0 := time.Now()
	if err := r.Commit(ctx, m, dir); err != nil {
		return 0, fmt.Errorf("upload alone: %w", err)
	}
	took := time.Since(t0)
	if err := r.Delete(context.WithoutCancel(ctx), m); err != nil {
		fmt.Fprintf(os.Stderr, "bench: upload alone: delete %s: %v\n", m.UUID, err)
	}
	return took, nil
}
