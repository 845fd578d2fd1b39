package storage_test

import (
	"context"
	"os"
	"strconv"
	"testing"

	"github.com/podsnapshot/podsnapshot/storage/internal/bench"
	"github.com/podsnapshot/podsnapshot/storage/local"
)

// benchSize is the raw bytes per benchmark op: $STORAGE_BENCH_SIZE, default 256 MiB.
func benchSize() int64 {
	if v, err := strconv.ParseInt(os.Getenv("STORAGE_BENCH_SIZE"), 10, 64); err == nil && v > 0 {
		return v
	}
	return 256 << 20
}

func report(b *testing.B, r bench.Result) {
	b.ReportMetric(r.Ratio(), "ratio")
	b.ReportMetric(float64(r.PeakRSS>>20), "peakRSS-MiB")
	b.ReportMetric(r.CPU.Seconds(), "cpu-s")
}

// BenchmarkCodec measures each codec alone on memory-image-like data.
func BenchmarkCodec(b *testing.B) {
	size := benchSize()
	for _, c := range bench.Codecs {
		b.Run(c.Name+"/compress", func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				r, err := bench.Compress(c.Name, c.Codec, size)
				if err != nil {
					b.Fatal(err)
				}
				report(b, r)
			}
		})
	}
}

// BenchmarkLocal measures Upload and Download through the local store.
func BenchmarkLocal(b *testing.B) {
	size := benchSize()
	st, err := local.New(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, c := range bench.Codecs {
		name := "bench/pages.img." + c.Name
		b.Run(c.Name+"/upload", func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				r, _, err := bench.Upload(ctx, st, "local", name, c.Name, c.Codec, size)
				if err != nil {
					b.Fatal(err)
				}
				report(b, r)
			}
		})
		b.Run(c.Name+"/download", func(b *testing.B) {
			_, fi, err := bench.Upload(ctx, st, "local", name, c.Name, c.Codec, size)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(size)
			for b.Loop() {
				r, err := bench.Download(ctx, st, "local", c.Name, fi)
				if err != nil {
					b.Fatal(err)
				}
				report(b, r)
			}
		})
	}
}
