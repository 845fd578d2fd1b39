package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// frameDecoder decodes zstd frames in memory (DecodeAll), several at once. It verifies
// each frame's own checksum and refuses to decode more than MaxFrameSize bytes.
var frameDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(4),
		zstd.WithDecoderMaxWindow(MaxZstdWindow),
		zstd.WithDecoderMaxMemory(MaxFrameSize))
})

// FrameBuffers are the buffers ReadFrames reads and decodes into, grown as needed and
// kept for the next call: a frame's stored bytes and its raw bytes.
type FrameBuffers struct {
	Stored, Raw []byte
}

// ReadFrames reads frames [first, first+n) of the framed file x describes from st with
// one ranged read and calls fn with each frame's index and raw bytes, in order. Each
// frame is checked (FrameIndex.Check) and decoded before fn sees it; raw is valid only
// during fn. bufs (nil: allocate) are reused. Errors: the store's (naming the object); a
// *CorruptError naming the object and the frame when its bytes do not match, do not
// decode to its raw size, or are not there (the object ends early: a truncated object is
// corrupt at once, never an error worth retrying); fn's error as it is.
func ReadFrames(ctx context.Context, st Store, x *FrameIndex, first, n int, bufs *FrameBuffers, fn func(i int, raw []byte) error) error {
	if bufs == nil {
		bufs = &FrameBuffers{}
	}
	info := x.Info()
	url := st.URL(info.Name)
	off, size := x.Stored(first, n)
	rc, err := st.GetRange(ctx, info.Name, off, size)
	if errors.Is(err, ErrOutOfRange) {
		// The manifest says the object holds these bytes: it was cut short.
		return Corruptf(url, "frame %d: object ends before it: %v", first, err)
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	for i := first; i < first+n; i++ {
		fs := int(info.Frames[i].Size)
		if cap(bufs.Stored) < fs {
			bufs.Stored = make([]byte, fs)
		}
		stored := bufs.Stored[:fs]
		if _, err := io.ReadFull(rc, stored); err != nil {
			if err == io.ErrUnexpectedEOF || err == io.EOF {
				return Corruptf(url, "frame %d: object ends early", i)
			}
			return fmt.Errorf("read %s: frame %d: %w", url, i, err)
		}
		if err := x.Check(url, i, stored); err != nil {
			return err
		}
		raw, err := DecodeFrame(info.Codec, stored, bufs.Raw[:0])
		if err != nil {
			return Corruptf(url, "frame %d: %v", i, err)
		}
		if info.Codec == CodecZstd {
			bufs.Raw = raw
		}
		if int64(len(raw)) != x.RawLen(i) {
			return Corruptf(url, "frame %d: %v: %d bytes, want %d", i, errFrameDecode, len(raw), x.RawLen(i))
		}
		if err := fn(i, raw); err != nil {
			return err
		}
	}
	return nil
}

// DecodeFrame decodes one stored frame of codec (zstd or none), appending to dst. For
// codec none it returns stored itself.
func DecodeFrame(codec string, stored, dst []byte) ([]byte, error) {
	switch codec {
	case CodecNone, "":
		return stored, nil
	case CodecZstd:
		dec, err := frameDecoder()
		if err != nil {
			return nil, err
		}
		return dec.DecodeAll(stored, dst)
	}
	return nil, fmt.Errorf("codec %s cannot be framed", codec)
}
