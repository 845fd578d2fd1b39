package storage

import (
	"fmt"
	"io"
)

// Sampling of SampleRatio: up to sampleCount pieces of samplePiece bytes, spread evenly
// over the file. 8 MiB is enough to tell random or already-compressed memory (ratio about
// 1.0) from the usual heap and page-cache contents (2x and more), and costs about 15 ms of
// zstd on one core.
const (
	sampleCount = 8
	samplePiece = 1 << 20
)

// SampleRatio estimates the compression ratio (raw bytes / compressed bytes) codec
// reaches on the size bytes of r, by compressing up to 8 pieces of 1 MiB spread evenly
// over it, each on its own. A file of at most 8 MiB is compressed whole. An empty file
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
