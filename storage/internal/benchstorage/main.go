// Command benchstorage prints a table of snapshot-pipeline throughput: each codec alone,
// then compress+upload and download+decompress through the local store and through
// storage/gcs against fake-gcs-server on 127.0.0.1, on memory-image-like data (zero pages,
// text, random). Run by `make bench-storage` (SIZE=1GiB by default).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	gcs "cloud.google.com/go/storage"
	"github.com/podsnapshot/podsnapshot/internal/testenv/fakegcs"
	"github.com/podsnapshot/podsnapshot/storage"
	_ "github.com/podsnapshot/podsnapshot/storage/gcs"
	"github.com/podsnapshot/podsnapshot/storage/internal/bench"
	_ "github.com/podsnapshot/podsnapshot/storage/local"
)

func main() {
	size := flag.String("size", "1GiB", "bytes of raw data per case (suffixes KiB, MiB, GiB)")
	stores := flag.String("stores", "local,gcs", "stores to measure: local, gcs")
	codecs := flag.String("codecs", "zstd-1,zstd-3,flate-1", "codecs to measure")
	parallelism := flag.Int("parallelism", 0, "parts in flight (0: default)")
	partSize := flag.String("part-size", "32MiB", "GCS composite upload part size")
	repeat := flag.Int("repeat", 1, "runs per case; the fastest is reported (the machine may be shared)")
	flag.Parse()
	n, err := parseSize(*size)
	check(err)
	ps, err := parseSize(*partSize)
	check(err)
	opts := []storage.Option{storage.WithPartSize(ps), storage.WithParallelism(*parallelism)}
	ctx := context.Background()

	fmt.Printf("snapshot pipeline benchmark: %s of memory-image-like data (%d%% zero, %d%% text, rest random pages), GOMAXPROCS=%d\n",
		*size, 45, 35, runtime.GOMAXPROCS(0))
	var rs []bench.Result
	for _, c := range strings.Split(*codecs, ",") {
		codec, err := bench.CodecByName(c)
		check(err)
		r := best(*repeat, func() (bench.Result, error) { return bench.Compress(c, codec, n) })
		rs = append(rs, r)
		r = best(*repeat, func() (bench.Result, error) { return bench.Decompress(c, codec, n) })
		rs = append(rs, r)
	}
	for _, s := range strings.Split(*stores, ",") {
		st, stop := openStore(ctx, s, opts)
		for _, c := range strings.Split(*codecs, ",") {
			codec, _ := bench.CodecByName(c)
			name := "bench/pages.img." + c
			var fi storage.FileInfo
			up := best(*repeat, func() (r bench.Result, err error) {
				r, fi, err = bench.Upload(ctx, st, s, name, c, codec, n)
				return r, err
			})
			down := best(*repeat, func() (bench.Result, error) { return bench.Download(ctx, st, s, c, fi) })
			rs = append(rs, up, down)
			check(st.Delete(ctx, name))
		}
		st.Close()
		stop()
	}
	fmt.Print("\n" + bench.Table(rs))
	fmt.Printf("MB/s: raw (uncompressed) 10^6 bytes per second, data generation included, fastest of %d; ratio: raw/stored;\n", *repeat)
	fmt.Println("peak RSS: this process's high-water mark during the case (the emulator runs in its own process);")
	fmt.Println("(at start): RSS when the case started, e.g. decompress holds its compressed input in memory;")
	fmt.Println("CPU s: this process's user+system CPU time, a measure that other load on the machine does not skew.")
}

func openStore(ctx context.Context, kind string, opts []storage.Option) (storage.Store, func()) {
	switch kind {
	case "local":
		dir, err := os.MkdirTemp("", "benchstorage-")
		check(err)
		st, err := storage.Open(ctx, dir, opts...)
		check(err)
		return st, func() { os.RemoveAll(dir) }
	case "gcs":
		srv, err := fakegcs.Start(ctx, fakegcs.Options{})
		check(err)
		os.Setenv("STORAGE_EMULATOR_HOST", srv.Host)
		c, err := gcs.NewClient(ctx)
		check(err)
		check(c.Bucket("bench").Create(ctx, "bench", nil))
		c.Close()
		st, err := storage.Open(ctx, "gs://bench/snapshots", opts...)
		check(err)
		return st, srv.Kill
	}
	check(fmt.Errorf("unknown store %q", kind))
	return nil, nil
}

// best runs f n times and returns the fastest result, printing each as progress.
func best(n int, f func() (bench.Result, error)) bench.Result {
	var b bench.Result
	for i := range max(n, 1) {
		r, err := f()
		check(err)
		progress(r)
		if i == 0 || r.Dur < b.Dur {
			b = r
		}
	}
	return b
}

func progress(r bench.Result) {
	fmt.Fprintf(os.Stderr, "  %s %s %s: %.0f MB/s\n", r.Store, r.Codec, r.Op, r.MBps())
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = v, u.m
			break
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad size %q: want e.g. 1GiB, 256MiB", s)
	}
	return v * mult, nil
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchstorage:", err)
		os.Exit(1)
	}
}
