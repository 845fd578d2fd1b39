// Package bench measures the snapshot file pipeline: a codec alone, and compress+upload
// and download+decompress through a store, on memory-image-like data (imagedata). It
// reports throughput in MB/s of raw bytes (10^6 bytes per second), compression ratio and
// peak RSS, and backs both `go test -bench` and `make bench-storage`.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/podsnapshot/podsnapshot/storage"
	"github.com/podsnapshot/podsnapshot/storage/internal/imagedata"
)

// Codecs are the codecs compared, by bench name.
var Codecs = []struct {
	Name  string
	Codec storage.Codec
}{
	{"zstd-1", storage.Zstd{Level: 1}},
	{"zstd-3", storage.Zstd{Level: 3}},
	{"flate-1", storage.Flate{}}, // gVisor's built-in choice (compress/flate BestSpeed); compare only
}

// CodecByName returns one of Codecs.
func CodecByName(name string) (storage.Codec, error) {
	for _, c := range Codecs {
		if c.Name == name {
			return c.Codec, nil
		}
	}
	return nil, fmt.Errorf("unknown bench codec %q", name)
}

// Result is one measurement.
type Result struct {
	Store, Codec, Op string
	Raw, Stored      int64 // bytes
	Dur              time.Duration
	PeakRSS          int64         // bytes, of the whole process; 0 when unknown
	BaseRSS          int64         // bytes, RSS when the measurement started (input buffers, etc.)
	CPU              time.Duration // user+system CPU time of this process
}

// MBps is raw megabytes (10^6 bytes) per second.
func (r Result) MBps() float64 { return float64(r.Raw) / 1e6 / r.Dur.Seconds() }

// Ratio is raw bytes per stored byte.
func (r Result) Ratio() float64 {
	if r.Stored == 0 {
		return 0
	}
	return float64(r.Raw) / float64(r.Stored)
}

// Data returns the benchmark input: size bytes of memory-image-like pages.
func Data(size int64) io.Reader { return imagedata.New(size, 1) }

// Compress measures codec alone: generate, compress, discard.
func Compress(name string, codec storage.Codec, size int64) (Result, error) {
	var stored int64
	r, err := measure(func() error {
		cw := &countWriter{}
		enc, err := codec.NewWriter(cw)
		if err != nil {
			return err
		}
		if _, err := io.Copy(enc, Data(size)); err != nil {
			return err
		}
		err = enc.Close()
		stored = cw.n
		return err
	})
	r.Store, r.Codec, r.Op, r.Raw, r.Stored = "-", name, "compress", size, stored
	return r, err
}

// Decompress measures codec alone on data it first compresses into memory.
func Decompress(name string, codec storage.Codec, size int64) (Result, error) {
	var buf bytes.Buffer
	enc, err := codec.NewWriter(&buf)
	if err != nil {
		return Result{}, err
	}
	io.Copy(enc, Data(size))
	enc.Close()
	r, err := measure(func() error {
		dec, err := codec.NewReader(bytes.NewReader(buf.Bytes()))
		if err != nil {
			return err
		}
		defer dec.Close()
		_, err = io.Copy(io.Discard, dec)
		return err
	})
	r.Store, r.Codec, r.Op, r.Raw, r.Stored = "-", name, "decompress", size, int64(buf.Len())
	return r, err
}

// Upload measures storage.Upload of size bytes to st.
func Upload(ctx context.Context, st storage.Store, storeName, name string, codecName string, codec storage.Codec, size int64) (Result, storage.FileInfo, error) {
	var fi storage.FileInfo
	r, err := measure(func() (err error) {
		fi, err = storage.Upload(ctx, st, name, Data(size), codec)
		return err
	})
	r.Store, r.Codec, r.Op, r.Raw, r.Stored = storeName, codecName, "upload", size, fi.StoredSize
	return r, fi, err
}

// Download measures storage.Download of fi from st.
func Download(ctx context.Context, st storage.Store, storeName, codecName string, fi storage.FileInfo) (Result, error) {
	r, err := measure(func() error { return storage.Download(ctx, st, fi, io.Discard) })
	r.Store, r.Codec, r.Op, r.Raw, r.Stored = storeName, codecName, "download", fi.RawSize, fi.StoredSize
	return r, err
}

// measure runs f and returns its duration and the process's peak RSS while it ran (the
// high-water mark is reset first, after returning free memory to the OS).
func measure(f func() error) (Result, error) {
	runtime.GC() // twice: sync.Pool victims survive one collection
	debug.FreeOSMemory()
	resetPeakRSS()
	base := readStatus("VmRSS:")
	cpu0 := cpuTime()
	start := time.Now()
	err := f()
	return Result{Dur: time.Since(start), PeakRSS: readStatus("VmHWM:"), BaseRSS: base, CPU: cpuTime() - cpu0}, err
}

// resetPeakRSS resets VmHWM to the current RSS (Linux: "5" to /proc/self/clear_refs).
func resetPeakRSS() { os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// readStatus reads a kB field of /proc/self/status, in bytes.
func readStatus(field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// Table formats results as an aligned text table.
func Table(rs []Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-6s %-8s %-10s %8s %8s %6s %9s %10s %8s %8s\n", "store", "codec", "op", "raw MiB", "MB/s", "ratio", "peak RSS", "(at start)", "seconds", "CPU s")
	for _, r := range rs {
		fmt.Fprintf(&b, "%-6s %-8s %-10s %8d %8.0f %6.2f %8dM %9dM %8.2f %8.2f\n",
			r.Store, r.Codec, r.Op, r.Raw>>20, r.MBps(), r.Ratio(), r.PeakRSS>>20, r.BaseRSS>>20, r.Dur.Seconds(), r.CPU.Seconds())
	}
	return b.String()
}
