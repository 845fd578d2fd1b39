package storage

import (
	"fmt"
	"hash/crc32"
)

// A framed file is stored as a sequence of frames, each covering FrameSize raw bytes
// (the last one fewer) and readable on its own: with codec zstd each frame is an
// independent zstd frame (the concatenation is still one valid zstd stream, so a framed
// file downloads whole exactly like an unframed one); with codec none a frame is the raw
// bytes themselves. FileInfo.Frames records each frame's stored size and CRC32C, so any
// raw range can be fetched with one ranged read, verified and decoded without the rest
// of the file: what lets a restore start before the pages have arrived.

// DefaultFrameSize is the raw bytes per frame Commit uses: 4 MiB, small enough that a
// page fault waits for little more than its own page, large enough that a 64 GiB file
// has 16384 frames (about 500 KiB of manifest) and ranged reads stay efficient.
const DefaultFrameSize = 4 << 20

// MaxFrameSize bounds FileInfo.FrameSize (bytes): a frame is decoded in memory.
const MaxFrameSize = 64 << 20

// MaxStoredFrame is the most stored bytes a frame of raw raw bytes can take: zstd's
// worst case (incompressible data in raw blocks: 3 bytes of header per 128 KiB block,
// plus the frame header and checksum) with room to spare. NewFrameIndex refuses a
// manifest whose frame claims more, so that a bad manifest cannot make a reader allocate
// an arbitrary buffer.
func MaxStoredFrame(raw int64) int64 { return raw + raw>>7 + 1024 }

// Frame is one frame of a framed file as stored.
type Frame struct {
	// Size is the frame's stored size in bytes.
	Size int64 `json:"size"`
	// CRC32C is the Castagnoli CRC32 of the frame's stored bytes.
	CRC32C uint32 `json:"crc32c"`
}

// Framed reports whether info is a framed file (FrameSize set).
func (info FileInfo) Framed() bool { return info.FrameSize > 0 }

// FrameIndex locates the frames of a framed file: where each lies in the raw file and in
// the stored object. Build it with NewFrameIndex, which checks the index is consistent.
type FrameIndex struct {
	info FileInfo
	// stored[i] is the stored offset of frame i; stored[len(Frames)] is StoredSize.
	stored []int64
}

// NewFrameIndex checks info's frame list against its sizes and returns its index. Errors
// name the object (info.Name): FrameSize outside 1..MaxFrameSize, a frame count other
// than ceil(RawSize/FrameSize), a frame's stored size over MaxStoredFrame, stored sizes
// that do not add up to StoredSize, or, for codec none, a frame whose stored size is not
// its raw size.
func NewFrameIndex(info FileInfo) (*FrameIndex, error) {
	if info.FrameSize <= 0 || info.FrameSize > MaxFrameSize {
		return nil, fmt.Errorf("%s: frameSize %d outside 1..%d", info.Name, info.FrameSize, MaxFrameSize)
	}
	want := (info.RawSize + info.FrameSize - 1) / info.FrameSize
	if int64(len(info.Frames)) != want {
		return nil, fmt.Errorf("%s: %d frames, want %d for %d raw bytes in frames of %d", info.Name, len(info.Frames), want, info.RawSize, info.FrameSize)
	}
	x := &FrameIndex{info: info, stored: make([]int64, len(info.Frames)+1)}
	for i, f := range info.Frames {
		if f.Size <= 0 || f.Size > MaxStoredFrame(x.RawLen(i)) {
			// Bounded before any buffer of that size is allocated (ReadFrames).
			return nil, fmt.Errorf("%s: frame %d: stored size %d outside 1..%d", info.Name, i, f.Size, MaxStoredFrame(x.RawLen(i)))
		}
		if info.Codec == CodecNone && f.Size != x.RawLen(i) {
			return nil, fmt.Errorf("%s: frame %d: stored size %d, raw size %d (codec none)", info.Name, i, f.Size, x.RawLen(i))
		}
		x.stored[i+1] = x.stored[i] + f.Size
	}
	if x.stored[len(info.Frames)] != info.StoredSize {
		return nil, fmt.Errorf("%s: frames add up to %d stored bytes, storedSize is %d", info.Name, x.stored[len(info.Frames)], info.StoredSize)
	}
	return x, nil
}

// Info is the file the index describes.
func (x *FrameIndex) Info() FileInfo { return x.info }

// Len is the number of frames.
func (x *FrameIndex) Len() int { return len(x.info.Frames) }

// RawOffset is frame i's offset in the raw file.
func (x *FrameIndex) RawOffset(i int) int64 { return int64(i) * x.info.FrameSize }

// RawLen is frame i's raw size: FrameSize, or less for the last frame.
func (x *FrameIndex) RawLen(i int) int64 {
	return min(x.info.FrameSize, x.info.RawSize-x.RawOffset(i))
}

// Stored returns the stored offset and size of frames [first, first+n).
func (x *FrameIndex) Stored(first, n int) (off, size int64) {
	return x.stored[first], x.stored[first+n] - x.stored[first]
}

// Frames returns the frames [first, last] covering the raw range [off, off+n); n > 0,
// off+n <= RawSize.
func (x *FrameIndex) Frames(off, n int64) (first, last int) {
	return int(off / x.info.FrameSize), int((off + n - 1) / x.info.FrameSize)
}

// Check verifies stored, frame i's stored bytes, against its recorded size and CRC32C;
// a mismatch is a *CorruptError for url naming the frame.
func (x *FrameIndex) Check(url string, i int, stored []byte) error {
	f := x.info.Frames[i]
	if int64(len(stored)) != f.Size {
		return Corruptf(url, "frame %d: %d stored bytes, want %d", i, len(stored), f.Size)
	}
	if got := crc32.Checksum(stored, Castagnoli); got != f.CRC32C {
		return Corruptf(url, "frame %d: crc32c mismatch: got %d, want %d", i, got, f.CRC32C)
	}
	return nil
}
