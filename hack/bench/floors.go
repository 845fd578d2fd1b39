package main

import (
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podsnapshot/podsnapshot/internal/testenv/lab"
	"github.com/podsnapshot/podsnapshot/internal/testenv/shaped"
)

// Floors: what this machine's own parts allow, with none of our code, for the rows that
// compare against them (docs/benchmarks-floors.md).

// diskFloor is one pass of the disk floor: the same number of bytes as a snapshot's
// pages written to, and read back from, the filesystem of the node cache.
type diskFloor struct {
	bytes     int64
	write     time.Duration // write(2) of every byte, no fdatasync: into the page cache
	writeSync time.Duration // write(2) of every byte, then fdatasync: on the device
	readCold  time.Duration // read back after its pages were dropped from the page cache
	readWarm  time.Duration // read back again, from the page cache
}

// floorBlock is the size of one write and one read of the disk floor: 1 MiB, as a
// fill writes frames of a few MiB.
const floorBlock = 1 << 20

// measureDiskFloor writes mib MiB of incompressible bytes to a file in the lab's work
// dir (the node cache is its subdirectory cache/, so the same filesystem), timed: once
// without fdatasync, once with; then reads the file back cold (posix_fadvise DONTNEED
// after the fdatasync, so its clean pages leave the page cache) and warm. The file is
// removed. Errors are the filesystem's, wrapped.
func measureDiskFloor(l *lab.Lab, mib int) (diskFloor, error) {
	f := diskFloor{bytes: int64(mib) << 20}
	path := filepath.Join(l.WorkDir, "bench-disk-floor")
	defer os.Remove(path)
	// Random bytes, one buffer reused: no filesystem here compresses or dedupes, and
	// generating them is kept out of the timed loop.
	buf := make([]byte, floorBlock)
	rng := rand.NewChaCha8([32]byte{byte(mib)})
	_, _ = rng.Read(buf)

	var err error
	if f.write, err = writeFloorFile(path, buf, mib, false); err != nil {
		return f, err
	}
	if f.writeSync, err = writeFloorFile(path, buf, mib, true); err != nil {
		return f, err
	}
	if err := dropPageCache(path); err != nil {
		return f, err
	}
	if f.readCold, err = readFloorFile(path, buf, f.bytes); err != nil {
		return f, err
	}
	if f.readWarm, err = readFloorFile(path, buf, f.bytes); err != nil {
		return f, err
	}
	return f, nil
}

// writeFloorFile creates path afresh and writes buf mib times, then with sync
// fdatasyncs it; it returns the time of that. Without sync it fdatasyncs after the
// clock stopped, so the dirty pages do not burden the next measurement.
func writeFloorFile(path string, buf []byte, mib int, sync bool) (time.Duration, error) {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return 0, fmt.Errorf("disk floor: %w", err)
	}
	file, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("disk floor: %w", err)
	}
	defer file.Close()
	t0 := time.Now()
	for i := 0; i < mib; i++ {
		if _, err := file.Write(buf); err != nil {
			return 0, fmt.Errorf("disk floor: write %s: %w", path, err)
		}
	}
	if sync {
		if err := unix.Fdatasync(int(file.Fd())); err != nil {
			return 0, fmt.Errorf("disk floor: fdatasync %s: %w", path, err)
		}
	}
	took := time.Since(t0)
	if !sync {
		if err := unix.Fdatasync(int(file.Fd())); err != nil {
			return 0, fmt.Errorf("disk floor: fdatasync %s: %w", path, err)
		}
	}
	return took, file.Close()
}

// dropPageCache drops path's clean pages from the page cache (posix_fadvise
// POSIX_FADV_DONTNEED on the whole file): the next read comes from the device.
func dropPageCache(path string) error {
	file, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("disk floor: %w", err)
	}
	defer file.Close()
	if err := unix.Fadvise(int(file.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return fmt.Errorf("disk floor: fadvise DONTNEED %s: %w", path, err)
	}
	return nil
}

// readFloorFile reads path to the end in blocks of len(buf) and returns the time; it
// fails unless it read want bytes.
func readFloorFile(path string, buf []byte, want int64) (time.Duration, error) {
	file, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("disk floor: %w", err)
	}
	defer file.Close()
	t0 := time.Now()
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{file}, buf)
	took := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("disk floor: read %s: %w", path, err)
	}
	if n != want {
		return 0, fmt.Errorf("disk floor: read %d bytes of %s, want %d", n, path, want)
	}
	return took, nil
}

// defineFloorMetrics declares the disk floor's rows and containerd's own cost.
func defineFloorMetrics(r *Results) {
	for _, k := range []struct{ key, what, note string }{
		{"disk_write", "write, no fdatasync", "write(2) of the snapshot's raw size in 1 MiB blocks of random bytes to a fresh file in the shim's work dir, which holds the node cache: into the page cache"},
		{"disk_write_sync", "write + fdatasync", "the same writes, then fdatasync: until the bytes are on the device (a node cache entry is fsynced before it is published)"},
		{"disk_read_cold", "read back cold", "the file read back in 1 MiB blocks after posix_fadvise DONTNEED dropped its clean pages from the page cache: from the device"},
		{"disk_read_warm", "read back warm", "read again at once: from the page cache"},
	} {
		r.define(k.key+"_mbps", "disk floor, node cache's filesystem: "+k.what, "MB/s", k.note+"; raw bytes / time")
		r.define(k.key+"_s", "  disk floor: "+k.what, "s", "the same measurement as `disk floor, node cache's filesystem: "+k.what+"`, in seconds")
	}
	r.define("containerd_cost", "containerd's own cost on a plain start: runc shim driving runsc - `runsc run`", "s",
		"per set of runs, `echo ready` through containerd's runc shim driving runsc minus `runsc run` of the same bundle directly: containerd, ctr, the image's snapshot and a standard shim, with none of our code; the median of the per-run differences")
}

// diskFloors runs the disk floor -runs times at size mib and records it.
func diskFloors(rep *report, l *lab.Lab, mib int) error {
	for r := 0; r < rep.cfg.runs; r++ {
		f, err := measureDiskFloor(l, mib)
		if err != nil {
			return fmt.Errorf("%d MiB: %w", mib, err)
		}
		addDiskFloor(rep.res, mib, f)
	}
	return nil
}

// addDiskFloor records one pass of the disk floor at size mib.
func addDiskFloor(r *Results, mib int, f diskFloor) {
	for _, k := range []struct {
		key  string
		took time.Duration
	}{{"disk_write", f.write}, {"disk_write_sync", f.writeSync}, {"disk_read_cold", f.readCold}, {"disk_read_warm", f.readWarm}} {
		r.add(k.key+"_s", mib, k.took.Seconds())
		r.add(k.key+"_mbps", mib, float64(f.bytes)/1e6/k.took.Seconds())
	}
	logf("  disk floor: write %.0f MB/s, write+fdatasync %.0f MB/s, read cold %.0f MB/s, warm %.0f MB/s",
		float64(f.bytes)/1e6/f.write.Seconds(), float64(f.bytes)/1e6/f.writeSync.Seconds(),
		float64(f.bytes)/1e6/f.readCold.Seconds(), float64(f.bytes)/1e6/f.readWarm.Seconds())
}

// shapeFlags defines -shape-latency (ms), -shape-conn-mbps and -shape-total-mbps (MB/s,
// 10^6 bytes per second; 0: unlimited), defaulting to shaped.Defaults(). The function it
// returns, called after flag.Parse with whether -stores holds gcs-shaped, gives the
// options; it refuses negative values, and any -shape-* flag set when no store uses it.
func shapeFlags() func(used bool) (shaped.Options, error) {
	d := shaped.Defaults()
	latency := flag.Float64("shape-latency", float64(d.Latency)/float64(time.Millisecond), "gcs-shaped: first-byte latency of every response, in ms")
	conn := flag.Float64("shape-conn-mbps", d.ConnBytesPerSec/1e6, "gcs-shaped: bandwidth per TCP connection and direction, in MB/s (10^6 bytes/s); 0: unlimited")
	total := flag.Float64("shape-total-mbps", d.TotalBytesPerSec/1e6, "gcs-shaped: bandwidth of all connections together per direction, in MB/s; 0: unlimited")
	return func(used bool) (shaped.Options, error) {
		var set []string
		flag.Visit(func(f *flag.Flag) {
			if strings.HasPrefix(f.Name, "shape-") {
				set = append(set, "-"+f.Name)
			}
		})
		if len(set) > 0 && !used {
			return shaped.Options{}, fmt.Errorf("%s: only the gcs-shaped store uses them, and -stores lacks it", strings.Join(set, ", "))
		}
		if *latency < 0 || *conn < 0 || *total < 0 {
			return shaped.Options{}, fmt.Errorf("-shape-latency, -shape-conn-mbps and -shape-total-mbps must not be negative")
		}
		return shaped.Options{Latency: time.Duration(*latency * float64(time.Millisecond)), ConnBytesPerSec: *conn * 1e6, TotalBytesPerSec: *total * 1e6}, nil
	}
}
