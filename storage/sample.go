package storage

import (
	"fmt"
	"io"
)

// Sampling of SampleRatio: up to sampleCount pieces of samplePiece bytes, spread evenly
// over the file, 8 MiB in all (about 15 ms of zstd on one core). That tells random or
// already-compressed memory (ratio about 1.0) from the usual heap and page-cache
// contents (2x and more). Many small pieces rather than a few large ones: memory that
// barely compresses beside a small part that compresses well (a model's weights and its
// runtime's heap) is judged by how much of the file each kind fills. Eight pieces of
// 1 MiB hit such a part by chance: issue 26's torch snapshot (ratio 1.09 stored) was
// sampled above repo.Repo.MinRatio's 1.1 in every bench run. A piece of 128 KiB
// compresses a little less than the upload's 4 MiB frames on text-like memory, which
// errs on the side of storing it as it is.
const (
	sampleCount = 64
	samplePiece = 128 << 10
)

// SampleRatio estimates the compression ratio (raw bytes / compressed bytes) codec
// reaches on the size bytes of r, by compressing up to 64 pieces of 128 KiB spread
// evenly over it, each on its own. A file of at most 8 MiB is compressed whole. An empty file
// has ratio 1. Errors are r's read errors and the codec's.
func SampleRatio(r io.ReaderAt, size int64, codec Codec) (float64, error) {
	if size <= 0 {
		return 1, nil
	}
	pieces, piece := int64(sampleCount), int64(samplePiece)
	if size <= pieces*piece {
		pieces, piece = 1, size
	}
	stride := size / pieces
	var raw, compressed int64
	for i := range pieces {
		cw := &countWriter{}
		enc, err := codec.NewWriter(cw)
		if err != nil {
			return 0, err
		}
		n, err := io.Copy(enc, io.NewSectionReader(r, i*stride, piece))
		if cerr := enc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return 0, fmt.Errorf("sample %s compression: %w", codec.Name(), err)
		}
		raw += n
		compressed += cw.n
	}
	if compressed == 0 {
		return 1, nil
	}
	return float64(raw) / float64(compressed), nil
}

// countWriter counts and discards what is written.
type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }
