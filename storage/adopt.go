package storage

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cespare/xxhash/v2"
)

// ErrCrossDevice is wrapped by Adopter.Adopt's error when the file lies on another
// filesystem than the store.
var ErrCrossDevice = errors.New("on another filesystem than the store")

// Adopter is implemented by stores whose objects are files on this machine
// (storage/local): Adopt makes the file at path the object name without copying it, with
// crc as its recorded CRC32C, durably. The caller must not write the file afterwards.
type Adopter interface {
	Adopt(ctx context.Context, name, path string, crc uint32) (ObjectInfo, error)
}

// AdoptFramed stores the file at path uncompressed (codec none) in frames of frameSize
// bytes, as UploadFramed would, but, where st is an Adopter on the file's filesystem,
// by making the file itself the object: the file is read once for its checksums (frame
// CRC32Cs, XXH64, CRC32C) and written no more, where an upload writes every byte again.
// ok is false, with nothing stored, when st cannot adopt the file (no Adopter, another
// filesystem): upload it instead. The file must not change meanwhile or afterwards.
func AdoptFramed(ctx context.Context, st Store, name, path string, frameSize int) (info FileInfo, ok bool, err error) {
	a, isAdopter := st.(Adopter)
	if !isAdopter {
		return info, false, nil
	}
	url := st.URL(name)
	f, err := os.Open(path)
	if err != nil {
		return info, false, fmt.Errorf("adopt %s: %w", url, err)
	}
	defer f.Close()
	raw := &hashReader{ctx: ctx, r: f, h: newAsyncHash(xxhash.New())}
	defer raw.h.stop()
	sum := &crcWriter{w: io.Discard}
	frames, err := copyFrames(sum, raw, frameSize)
	if err != nil {
		return info, false, fmt.Errorf("adopt %s: read %s: %w", url, path, err)
	}
	obj, err := a.Adopt(ctx, name, path, sum.crc)
	if errors.Is(err, ErrCrossDevice) {
		return info, false, nil
	}
	if err != nil {
		return info, false, err
	}
	if obj.Size != raw.n {
		derr := st.Delete(context.WithoutCancel(ctx), name)
		return info, false, errors.Join(Corruptf(url, "adopted %d bytes, read %d: the file changed", obj.Size, raw.n), derr)
	}
	return FileInfo{
		Name: name, RawSize: raw.n, StoredSize: raw.n, Codec: CodecNone,
		XXH64: hex.EncodeToString(raw.h.Sum()), CRC32C: sum.crc,
		FrameSize: int64(frameSize), Frames: frames,
	}, true, nil
}
