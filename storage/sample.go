package storage

import (
	"fmt"
	"io"
)

// Sampling of SampleRatio: up to sampleCount pieces of samplePiece bytes, spread evenly
// over the file, 8 MiB in all (BenchmarkSampleRatio). That tells random or
// already-compressed memory (ratio about 1.0) from the usual heap and page-cache contents
// (2x and more). Many small pieces rather than a few large ones: memory that
// barely compresses beside a small part that compresses well (a model's weights and its
// runtime's heap) is judged by how much of the file each kind fills. Eight pieces of
// 1 MiB hit such a part by chance: issue 26's torch snapshot (ratio 1.09 stored) came
// out above a MinRatio of 1.1 in every bench run. A piece of 128 KiB
// compresses a little less than the upload's 4 MiB frames on text-like memory, which
// errs on the side of storing it as it is.
const (
	sampleCount = 64
	samplePiece = 128 << 10
)

// SampleRatio estimates the compression ratio (raw bytes / compressed bytes) codec
// reaches on the size bytes of r, by compressing up to 64 pieces of 128 KiB, each in the
// middle of its 64th of the file, each on its own. A file of at most 8 MiB is compressed
// whole. An empty file has ratio 1. Zstd compresses each piece as the framed upload
// compresses a frame, with one encoder for all; another codec gets a writer per piece.
// Errors are r's read errors and the codec's.
func SampleRatio(r io.ReaderAt, size int64, codec Codec) (float64, error) {
	if size <= 0 {
		return 1, nil
	}
	pieces, piece := int64(sampleCount), int64(samplePiece)
	if size <= pieces*piece {
		pieces, piece = 1, size
	}
	compress, err := sampleCompressor(codec)
	if err != nil {
		return 0, err
	}
	stride := size / pieces
	buf := make([]byte, piece)
	var raw, compressed int64
	for i := range pieces {
		// The middle of the stride, not its start: a file's layout has boundaries at
		// round offsets, which the starts of power-of-two strides would all sit on.
		if n, err := r.ReadAt(buf, i*stride+(stride-piece)/2); n < len(buf) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF // shorter than size
			}
			return 0, fmt.Errorf("sample for %s compression: %w", codec.Name(), err)
		}
		n, err := compress(buf)
		if err != nil {
			return 0, fmt.Errorf("sample %s compression: %w", codec.Name(), err)
		}
		raw += piece
		compressed += n
	}
	if compressed == 0 {
		return 1, nil
	}
	return float64(raw) / float64(compressed), nil
}

// sampleCompressor returns a function giving the size codec compresses p to.
func sampleCompressor(codec Codec) (func(p []byte) (int64, error), error) {
	if _, ok := codec.(Zstd); ok {
		enc, err := frameEncoder(codec)
		if err != nil {
			return nil, err
		}
		var dst []byte
		return func(p []byte) (int64, error) {
			dst = enc(p, dst)
			return int64(len(dst)), nil
		}, nil
	}
	return func(p []byte) (int64, error) {
		cw := &countWriter{}
		w, err := codec.NewWriter(cw)
		if err != nil {
			return 0, err
		}
		_, err = w.Write(p)
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		return cw.n, err
	}, nil
}

// countWriter counts and discards what is written.
type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }
