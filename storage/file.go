package storage

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"github.com/cespare/xxhash/v2"
)

// Linker is implemented by stores whose objects are files on this machine
// (storage/local). Link makes path a new hard link to the object name: no byte is
// copied. It fails where path exists or lies on another filesystem than the store.
// Objects are immutable (a Put replaces the file by rename), so the link keeps the
// object's bytes as they were even when the object is later replaced or deleted.
type Linker interface {
	Link(ctx context.Context, name, path string) error
}

// DownloadFile downloads the object info names into a new file at path, verified as
// Download verifies. An uncompressed object (codec none) of a Linker store is
// hard-linked to path and read once to verify it, instead of copied: restoring from a
// node-local store then costs a read of the snapshot, not a copy and a write. When the
// link fails (another filesystem), the object is copied. On error path is removed; a
// mismatch is a *CorruptError naming the object.
func DownloadFile(ctx context.Context, st Store, info FileInfo, path string) error {
	if info.Codec == CodecNone {
		if l, ok := st.(Linker); ok && l.Link(ctx, info.Name, path) == nil {
			if err := verifyFile(ctx, path, info, st.URL(info.Name)); err != nil {
				os.Remove(path)
				return err
			}
			return nil
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("download %s: %w", st.URL(info.Name), err)
	}
	err = Download(ctx, st, info, f)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("download %s: %w", st.URL(info.Name), cerr)
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// verifyFile checks that the file at path holds the bytes of info, stored uncompressed:
// size, CRC32C and XXH64, in one read.
func verifyFile(ctx context.Context, path string, info FileInfo, url string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("verify %s: %w", url, err)
	}
	defer f.Close()
	var (
		xh  = xxhash.New()
		crc uint32
		n   int64
		buf = make([]byte, verifyBufSize)
	)
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("verify %s: %w", url, err)
		}
		k, err := f.Read(buf)
		xh.Write(buf[:k])
		crc = crc32.Update(crc, Castagnoli, buf[:k])
		n += int64(k)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("verify %s: %w", url, err)
		}
	}
	switch got := hex.EncodeToString(xh.Sum(nil)); {
	case n != info.StoredSize || n != info.RawSize:
		return Corruptf(url, "size mismatch: got %d bytes, want %d", n, info.StoredSize)
	case crc != info.CRC32C:
		return Corruptf(url, "crc32c mismatch: got %d, want %d", crc, info.CRC32C)
	case got != info.XXH64:
		return Corruptf(url, "xxh64 mismatch: got %s, want %s", got, info.XXH64)
	}
	return nil
}

// verifyBufSize is the size in bytes of verifyFile's reads.
const verifyBufSize = 1 << 20
