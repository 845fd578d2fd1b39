package storage

import (
	"compress/flate"
	"fmt"
	"io"
	"runtime"

	"github.com/klauspost/compress/zstd"
)

// Codec is a streaming compression format for snapshot files.
type Codec interface {
	// Name is what FileInfo.Codec records: "zstd", "none" or "flate".
	Name() string
	// NewWriter compresses into w. Close flushes the end of the stream; it does not close w.
	NewWriter(w io.Writer) (io.WriteCloser, error)
	// NewReader decompresses r. Close releases the decoder; it does not close r.
	NewReader(r io.Reader) (io.ReadCloser, error)
}

// Codec names.
const (
	CodecZstd  = "zstd"
	CodecNone  = "none"
	CodecFlate = "flate"
)

// CodecByName returns the codec for a FileInfo.Codec value, with default settings.
func CodecByName(name string) (Codec, error) {
	switch name {
	case CodecZstd:
		return Zstd{}, nil
	case CodecNone, "":
		return None{}, nil
	case CodecFlate:
		return Flate{}, nil
	}
	return nil, fmt.Errorf("unknown codec %q (want zstd or none)", name)
}

// Zstd is the zstd codec (github.com/klauspost/compress/zstd). The zero value is level 3
// with GOMAXPROCS-way parallel compression and a 2 MiB window: about 80 MiB of memory
// at most on 2 CPUs, and at least 90% of the ratio of an 8 MiB window on memory images.
type Zstd struct {
	// Level is the zstd level 1..22, mapped to the encoder's four speeds (1-2 fastest,
	// 3-5 default, 6-9 better, 10+ best). 0 means 3.
	Level int
	// Concurrency is how many goroutines compress at once; above 1 the stream is cut into
	// jobs of 4 windows compressed in parallel, a few jobs of memory each. 0 means
	// GOMAXPROCS, 1 compresses one block at a time behind the writer.
	Concurrency int
	// WindowSize is the match window in bytes, a power of two from 1 KiB to 8 MiB; it sets
	// the encoder's memory. 0 means DefaultZstdWindow.
	WindowSize int
	// DecoderConcurrency is how many blocks are decoded ahead; 0 means min(4, GOMAXPROCS).
	DecoderConcurrency int
}

// DefaultZstdWindow is Zstd.WindowSize's default (bytes).
const DefaultZstdWindow = 2 << 20

// MaxZstdWindow bounds the window a zstd stream may ask the decoder for (bytes), and so
// the decoder's memory. The encoder uses at most 8 MiB.
const MaxZstdWindow = 64 << 20

// Name returns "zstd".
func (Zstd) Name() string { return CodecZstd }

// NewWriter returns a zstd encoder writing one frame to w.
func (z Zstd) NewWriter(w io.Writer) (io.WriteCloser, error) {
	level := z.Level
	if level == 0 {
		level = 3
	}
	conc := z.Concurrency
	if conc <= 0 {
		conc = runtime.GOMAXPROCS(0)
	}
	window := z.WindowSize
	if window == 0 {
		window = DefaultZstdWindow
	}
	enc, err := zstd.NewWriter(w,
		zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
		zstd.WithWindowSize(window),
		zstd.WithEncoderCRC(false), // FileInfo's xxh64 and CRC32C already cover the bytes
		zstd.WithEncoderConcurrency(conc),
		zstd.WithConcurrentBlocks(conc > 1))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	return enc, nil
}

// NewReader returns a zstd decoder of r.
func (z Zstd) NewReader(r io.Reader) (io.ReadCloser, error) {
	conc := z.DecoderConcurrency
	if conc <= 0 {
		conc = min(4, runtime.GOMAXPROCS(0))
	}
	dec, err := zstd.NewReader(r,
		zstd.WithDecoderConcurrency(conc),
		zstd.WithDecoderMaxWindow(MaxZstdWindow))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return zstdReader{dec}, nil
}

// zstdReader adapts *zstd.Decoder, whose Close returns nothing, to io.ReadCloser.
type zstdReader struct{ *zstd.Decoder }

func (r zstdReader) Close() error { r.Decoder.Close(); return nil }

// None stores bytes as they are.
type None struct{}

// Name returns "none".
func (None) Name() string { return CodecNone }

// NewWriter returns w with a no-op Close.
func (None) NewWriter(w io.Writer) (io.WriteCloser, error) { return nopWriteCloser{w}, nil }

// NewReader returns r with a no-op Close.
func (None) NewReader(r io.Reader) (io.ReadCloser, error) { return io.NopCloser(r), nil }

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// Flate is DEFLATE (compress/flate), the format of gVisor's built-in state compression.
// It is here to compare against; snapshots use zstd. The zero value is BestSpeed.
type Flate struct {
	// Level is a compress/flate level; 0 means flate.BestSpeed.
	Level int
}

// Name returns "flate".
func (Flate) Name() string { return CodecFlate }

// NewWriter returns a single-stream DEFLATE writer.
func (f Flate) NewWriter(w io.Writer) (io.WriteCloser, error) {
	level := f.Level
	if level == 0 {
		level = flate.BestSpeed
	}
	fw, err := flate.NewWriter(w, level)
	if err != nil {
		return nil, fmt.Errorf("flate encoder: %w", err)
	}
	return fw, nil
}

// NewReader returns a DEFLATE reader.
func (Flate) NewReader(r io.Reader) (io.ReadCloser, error) { return flate.NewReader(r), nil }
