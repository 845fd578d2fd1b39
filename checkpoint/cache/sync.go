package cache

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// An entry is trusted as it is: a restore reads it without verifying it again. So a fill
// is made durable before it is published, and the rename that publishes it after: a power
// loss (the page cache lost) must not leave an entry whose files hold zeros where the
// pages were. The files are written through the page cache while the download runs; the
// writeback this forces is mostly done by then (the kernel writes dirty pages back within
// seconds), and what is left is waited for here, after the pod already runs.
// docs/benchmarks.md has what it costs.

// syncFill writes the marker of key into dir and makes dir's files, the marker and dir
// itself durable (fsync). It returns how long that took.
func syncFill(dir, key string) (time.Duration, error) {
	t0 := time.Now()
	marker := filepath.Join(dir, EntryMarker)
	if err := os.WriteFile(marker, []byte(key), 0o600); err != nil {
		return 0, fmt.Errorf("snapshot cache: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("snapshot cache: %w", err)
	}
	for _, e := range entries {
		if e.Type().IsRegular() {
			if err := syncPath(filepath.Join(dir, e.Name())); err != nil {
				return 0, err
			}
		}
	}
	if err := syncPath(dir); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// syncPath fsyncs the file or directory at path.
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("snapshot cache: sync: %w", err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("snapshot cache: sync %s: %w", path, err)
	}
	return nil
}
