package gcs_test

import (
	"context"
	"os"
	"strconv"
	"testing"

	"github.com/podsnapshot/podsnapshot/storage"
	"github.com/podsnapshot/podsnapshot/storage/internal/bench"
)

// BenchmarkEmulator measures Upload and Download through storage/gcs against the
// fake-gcs-server TestMain runs, with default part size and parallelism. Raw bytes per op:
// $STORAGE_BENCH_SIZE, default 256 MiB.
func BenchmarkEmulator(b *testing.B) {
	size := int64(256 << 20)
	if v, err := strconv.ParseInt(os.Getenv("STORAGE_BENCH_SIZE"), 10, 64); err == nil && v > 0 {
		size = v
	}
	st, err := storage.Open(context.Background(), "gs://"+bucket+"/bench")
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	report := func(b *testing.B, r bench.Result) {
		b.ReportMetric(r.Ratio(), "ratio")
		b.ReportMetric(float64(r.PeakRSS>>20), "peakRSS-MiB")
		b.ReportMetric(r.CPU.Seconds(), "cpu-s")
	}
	for _, c := range bench.Codecs {
		name := "pages.img." + c.Name
		b.Run(c.Name+"/upload", func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				r, _, err := bench.Upload(ctx, st, "gcs", name, c.Name, c.Codec, size)
				if err != nil {
					b.Fatal(err)
				}
				report(b, r)
			}
		})
		b.Run(c.Name+"/download", func(b *testing.B) {
			_, fi, err := bench.Upload(ctx, st, "gcs", name, c.Name, c.Codec, size)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(size)
			for b.Loop() {
				r, err := bench.Download(ctx, st, "gcs", c.Name, fi)
				if err != nil {
					b.Fatal(err)
				}
				report(b, r)
			}
		})
		st.Delete(ctx, name)
	}
}
