package storage

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/cespare/xxhash/v2"
	"hash/crc32"
	"io"
	"sync"
)

// Upload streams src through codec into st under name and returns the file's FileInfo:
// raw size and xxh64 of what src yielded, stored size and CRC32C of the object. Memory
// stays bounded whatever the size (the codec's window and jobs plus the store's parts in
// flight). The object appears only if everything succeeded; a failure of src, the codec
// or the store, or the end of ctx, leaves nothing under name. The store's CRC32C is
// checked against the bytes sent; a mismatch deletes the object and returns a
// *CorruptError.
func Upload(ctx context.Context, st Store, name string, src io.Reader, codec Codec) (FileInfo, error) {
	if codec == nil {
		codec = None{}
	}
	return upload(ctx, st, name, src, codec, func(dst io.Writer, raw *hashReader) error {
		return compress(dst, raw, codec)
	})
}

// pipeBufSize is the size in bytes of the writes Upload makes to the store's Put.
const pipeBufSize = 1 << 20

// copyBufSize is the size in bytes of the reads compress makes from its source.
const copyBufSize = 1 << 20

// onlyWriter hides any ReadFrom of w, so io.CopyBuffer uses its buffer.
type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }

// compress copies src through a codec writer into dst and closes the codec writer. It
// reads in pieces of copyBufSize: a snapshot file read from disk wants large reads.
func compress(dst io.Writer, src io.Reader, codec Codec) error {
	enc, err := codec.NewWriter(dst)
	if err != nil {
		return err
	}
	if _, err := io.CopyBuffer(onlyWriter{enc}, src, make([]byte, copyBufSize)); err != nil {
		enc.Close()
		return err
	}
	return enc.Close()
}

// Download streams the object info names from st, decompresses it with info.Codec into
// dst, and verifies the stored bytes (StoredSize, CRC32C) and the raw bytes (RawSize,
// XXH64). A mismatch or undecodable data is a *CorruptError (errors.Is ErrCorrupt)
// naming the object. dst has then received unverified bytes: treat what it holds as valid
// only when Download returns nil. dst never receives more than info.RawSize bytes: data
// that decompresses to more stops there, a *CorruptError. Memory stays bounded whatever
// the size.
func Download(ctx context.Context, st Store, info FileInfo, dst io.Writer) error {
	url := st.URL(info.Name)
	codec, err := CodecByName(info.Codec)
	if err != nil {
		return fmt.Errorf("download %s: %w", url, err)
	}
	rc, err := st.Get(ctx, info.Name)
	if err != nil {
		return err
	}
	defer rc.Close()
	stored := &crcReader{r: rc}
	dec, err := codec.NewReader(stored)
	if err != nil {
		return fmt.Errorf("download %s: %w", url, err)
	}
	// The declared raw size bounds what reaches dst: a small object may decompress to
	// gigabytes (a zstd bomb), and dst is usually a file on a node's disk.
	bounded := &boundedWriter{w: dst, left: max(info.RawSize, 0)}
	out := &hashWriter{w: bounded, h: newAsyncHash(xxhash.New())}
	defer out.h.stop()
	_, cerr := io.Copy(out, dec)
	dec.Close()
	if cerr != nil && bounded.over {
		return Corruptf(url, "%s data yields more than its raw size of %d bytes (stopped after reading %d stored bytes)", codec.Name(), info.RawSize, stored.n)
	}
	if cerr != nil && out.err != nil {
		return fmt.Errorf("download %s: write: %w", url, out.err)
	}
	// Read what the decoder left (trailing bytes, or the rest after a decoding error) so
	// the checksum of the stored bytes is complete and names the fault precisely.
	if _, err := io.Copy(io.Discard, stored); err != nil || stored.failed() != nil {
		if serr := stored.failed(); serr != nil {
			return serr
		}
		return fmt.Errorf("download %s: %w", url, err)
	}
	switch {
	case stored.crc != info.CRC32C:
		return Corruptf(url, "crc32c mismatch: got %d, want %d", stored.crc, info.CRC32C)
	case stored.n != info.StoredSize:
		return Corruptf(url, "stored size mismatch: got %d bytes, want %d", stored.n, info.StoredSize)
	case cerr != nil:
		return Corruptf(url, "%s: %v", codec.Name(), cerr)
	case out.n != info.RawSize:
		return Corruptf(url, "raw size mismatch: got %d bytes, want %d", out.n, info.RawSize)
	}
	if got := hex.EncodeToString(out.h.Sum()); got != info.XXH64 {
		return Corruptf(url, "xxh64 mismatch: got %s, want %s", got, info.XXH64)
	}
	return nil
}

// hashReader hashes and counts what it reads, stops when ctx ends, and records a read
// error other than EOF.
type hashReader struct {
	ctx context.Context
	r   io.Reader
	h   *asyncHash
	n   int64
	err error
}

func (r *hashReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		r.err = err
		return 0, err
	}
	n, err := r.r.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// hashWriter hashes and counts what it writes and records a write error.
type hashWriter struct {
	w   io.Writer
	h   *asyncHash
	n   int64
	err error
}

func (w *hashWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	if err != nil {
		w.err = err
	}
	return n, err
}

// errOverRawSize is boundedWriter's error once its limit is reached.
var errOverRawSize = errors.New("more bytes than the declared raw size")

// boundedWriter passes at most left bytes on to w; a write beyond that passes on what
// fits, sets over and fails with errOverRawSize.
type boundedWriter struct {
	w    io.Writer
	left int64
	over bool
}

func (b *boundedWriter) Write(p []byte) (int, error) {
	if int64(len(p)) <= b.left {
		n, err := b.w.Write(p)
		b.left -= int64(n)
		return n, err
	}
	n, err := b.w.Write(p[:b.left])
	b.left -= int64(n)
	if err == nil {
		b.over = true
		err = errOverRawSize
	}
	return n, err
}

// crcWriter computes the CRC32C and count of what it writes and records a write error.
type crcWriter struct {
	w   io.Writer
	crc uint32
	n   int64
	err error
}

func (w *crcWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.crc = crc32.Update(w.crc, Castagnoli, p[:n])
	w.n += int64(n)
	if err != nil {
		w.err = err
	}
	return n, err
}

// crcReader computes the CRC32C and count of what it reads and records a read error other
// than EOF. A decoder may read it from its own goroutine, hence the lock on err.
type crcReader struct {
	r   io.Reader
	crc uint32
	n   int64
	mu  sync.Mutex
	err error
}

func (r *crcReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.crc = crc32.Update(r.crc, Castagnoli, p[:n])
	r.n += int64(n)
	if err != nil && err != io.EOF {
		r.mu.Lock()
		r.err = err
		r.mu.Unlock()
	}
	return n, err
}

func (r *crcReader) failed() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}
