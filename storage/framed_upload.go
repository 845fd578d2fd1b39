package storage

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
)

// UploadFramed is Upload of a framed file (frames.go): src is cut into frames of
// frameSize raw bytes, each compressed on its own (codec zstd: frames are compressed in
// parallel, GOMAXPROCS at a time, and written in order) or stored as it is (codec none).
// The returned FileInfo has FrameSize and Frames set besides what Upload sets; the
// object's bytes are the frames back to back. Only codecs zstd and none can be framed;
// another is an error naming it. Memory: about 2 x frameSize per frame in flight
// (GOMAXPROCS + 2 frames). Failure and corruption behave as Upload's.
func UploadFramed(ctx context.Context, st Store, name string, src io.Reader, codec Codec, frameSize int) (FileInfo, error) {
	if codec == nil {
		codec = None{}
	}
	if frameSize <= 0 || frameSize > MaxFrameSize {
		return FileInfo{}, fmt.Errorf("upload %s: frame size %d outside 1..%d", st.URL(name), frameSize, MaxFrameSize)
	}
	enc, err := frameEncoder(codec)
	if err != nil {
		return FileInfo{}, fmt.Errorf("upload %s: %w", st.URL(name), err)
	}
	var frames []Frame
	info, err := upload(ctx, st, name, src, codec, func(dst io.Writer, raw *hashReader) error {
		frames, err = writeFrames(dst, raw, frameSize, enc)
		return err
	})
	if err != nil {
		return FileInfo{}, err
	}
	info.FrameSize, info.Frames = int64(frameSize), frames
	return info, nil
}

// encodeFunc encodes one frame's raw bytes, appending to dst[:0]; nil means stored as it
// is.
type encodeFunc func(raw, dst []byte) []byte

// frameEncoder returns the frame encoder of codec.
func frameEncoder(codec Codec) (encodeFunc, error) {
	switch c := codec.(type) {
	case None:
		return nil, nil
	case Zstd:
		level := c.Level
		if level == 0 {
			level = 3
		}
		window := c.WindowSize
		if window == 0 {
			window = DefaultZstdWindow
		}
		z, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
			zstd.WithWindowSize(window),
			// The frame's own checksum: a decoding fault is caught frame by frame.
			zstd.WithEncoderCRC(true),
			zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)))
		if err != nil {
			return nil, fmt.Errorf("zstd encoder: %w", err)
		}
		return func(raw, dst []byte) []byte { return z.EncodeAll(raw, dst[:0]) }, nil
	}
	return nil, fmt.Errorf("codec %s cannot be framed (want zstd or none)", codec.Name())
}

// frameJob is one frame on its way through writeFrames.
type frameJob struct {
	raw, out []byte
	done     chan struct{}
}

// writeFrames cuts src into frames of frameSize bytes, encodes them with enc (nil: as
// they are) on GOMAXPROCS workers, and writes them to dst in order. It returns each
// frame's stored size and CRC32C.
func writeFrames(dst io.Writer, src io.Reader, frameSize int, enc encodeFunc) ([]Frame, error) {
	if enc == nil {
		return copyFrames(dst, src, frameSize)
	}
	workers := runtime.GOMAXPROCS(0)
	order := make(chan *frameJob, workers+1) // bounds the frames in flight
	work := make(chan *frameJob, workers+1)
	free := make(chan *frameJob, workers+3)
	var readErr error
	stop := make(chan struct{})
	go func() { // reader: frames in order
		defer close(order)
		defer close(work)
		for {
			var j *frameJob
			select {
			case j = <-free:
			default:
				j = &frameJob{raw: make([]byte, frameSize)}
			}
			n, err := io.ReadFull(src, j.raw[:frameSize])
			if n > 0 {
				j.raw, j.done = j.raw[:n], make(chan struct{})
				select {
				case order <- j:
				case <-stop:
					return
				}
				work <- j
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return
			}
			if err != nil {
				readErr = err
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for j := range work {
				j.out = enc(j.raw, j.out)
				close(j.done)
			}
		})
	}
	var frames []Frame
	var werr error
	for j := range order {
		<-j.done
		if werr == nil {
			if _, err := dst.Write(j.out); err != nil {
				werr = err
				close(stop)
			}
			frames = append(frames, Frame{Size: int64(len(j.out)), CRC32C: crc32.Checksum(j.out, Castagnoli)})
		}
		j.raw = j.raw[:cap(j.raw)]
		select {
		case free <- j:
		default:
		}
	}
	wg.Wait()
	if werr != nil {
		return nil, werr
	}
	return frames, readErr
}

// copyFrames is writeFrames for frames stored as they are.
func copyFrames(dst io.Writer, src io.Reader, frameSize int) ([]Frame, error) {
	buf := make([]byte, frameSize)
	var frames []Frame
	for {
		n, err := io.ReadFull(src, buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return nil, werr
			}
			frames = append(frames, Frame{Size: int64(n), CRC32C: crc32.Checksum(buf[:n], Castagnoli)})
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return frames, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// upload is Upload with the encoding step given: write encodes what it reads from raw
// into dst. It sets every FileInfo field but FrameSize and Frames.
func upload(ctx context.Context, st Store, name string, src io.Reader, codec Codec, write func(dst io.Writer, raw *hashReader) error) (FileInfo, error) {
	url := st.URL(name)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	pr, pw := io.Pipe()
	type result struct {
		obj ObjectInfo
		err error
	}
	done := make(chan result, 1)
	go func() {
		obj, err := st.Put(ctx, name, pr)
		pr.CloseWithError(err) // stops the writer when Put returned early
		done <- result{obj, err}
	}()

	raw := &hashReader{ctx: ctx, r: src, h: newAsyncHash(xxhash.New())}
	defer raw.h.stop()
	sent := &crcWriter{w: pw}
	// Codecs write in small pieces; hand the store whole MiBs, not a syscall per piece.
	buf := bufio.NewWriterSize(sent, pipeBufSize)
	err := write(buf, raw)
	if err == nil {
		err = buf.Flush()
	}
	if err != nil {
		pw.CloseWithError(err)
		cancel()
		r := <-done
		switch {
		case raw.err != nil:
			return FileInfo{}, fmt.Errorf("upload %s: read source: %w", url, raw.err)
		case r.err != nil && sent.err != nil:
			return FileInfo{}, r.err // the store failed first
		default:
			return FileInfo{}, fmt.Errorf("upload %s: %s: %w", url, codec.Name(), err)
		}
	}
	pw.Close()
	r := <-done
	if r.err != nil {
		return FileInfo{}, r.err
	}
	if r.obj.Size != sent.n || (r.obj.HasCRC32C && r.obj.CRC32C != sent.crc) {
		derr := st.Delete(context.WithoutCancel(ctx), name)
		return FileInfo{}, errors.Join(Corruptf(url, "stored %d bytes crc32c %d, sent %d bytes crc32c %d",
			r.obj.Size, r.obj.CRC32C, sent.n, sent.crc), derr)
	}
	return FileInfo{
		Name:       name,
		RawSize:    raw.n,
		StoredSize: sent.n,
		Codec:      codec.Name(),
		XXH64:      hex.EncodeToString(raw.h.Sum()),
		CRC32C:     sent.crc,
	}, nil
}

// errFrameDecode is wrapped when a frame decodes to other than its raw size.
var errFrameDecode = errors.New("frame decodes to the wrong size")
