package storage

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"
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
// hard-linked to path and its size and XXH64 checked (verifyFile), instead of copied:
// restoring from a node-local store then costs a hash of the snapshot, not a copy. When the
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
// its size and XXH64. It maps the file instead of reading it, so the check costs the hash
// alone (about 0.2 s per GB) and no copy. The CRC32C, which guards the transfer from a
// remote store, is not computed: a link transfers nothing, and XXH64 covers the same
// bytes with 64 bits instead of 32.
func verifyFile(ctx context.Context, path string, info FileInfo, url string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("verify %s: %w", url, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("verify %s: %w", url, err)
	}
	if n := fi.Size(); n != info.StoredSize || n != info.RawSize {
		return Corruptf(url, "size mismatch: got %d bytes, want %d", n, info.StoredSize)
	}
	sum, err := hashMapped(ctx, f, fi.Size())
	if err != nil {
		return fmt.Errorf("verify %s: %w", url, err)
	}
	if got := hex.EncodeToString(sum); got != info.XXH64 {
		return Corruptf(url, "xxh64 mismatch: got %s, want %s", got, info.XXH64)
	}
	return nil
}

// hashMapped returns the XXH64 of the first size bytes of f, read through a mapping
// of verifyWindow bytes at a time (so the mapped pages counted in the process's RSS
// stay bounded). A file cut short while it is mapped faults on access (SIGBUS); that
// becomes an error here instead of ending the process.
func hashMapped(ctx context.Context, f *os.File, size int64) (sum []byte, err error) {
	xh := xxhash.New()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			sum, err = nil, fmt.Errorf("read fault (an I/O error, or the file shrank while verified): %v", r)
		}
	}()
	for off := int64(0); off < size; off += verifyWindow {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := hashWindow(xh, f, off, int(min(verifyWindow, size-off))); err != nil {
			return nil, err
		}
	}
	return xh.Sum(nil), nil
}

// hashWindow maps n bytes of f at off (a multiple of the page size), hashes them and
// unmaps them, also when the hash faults.
func hashWindow(xh *xxhash.Digest, f *os.File, off int64, n int) error {
	data, err := unix.Mmap(int(f.Fd()), off, n, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	defer unix.Munmap(data)
	_ = unix.Madvise(data, unix.MADV_SEQUENTIAL)
	xh.Write(data)
	return nil
}

// verifyWindow is how many bytes of a file verifyFile maps at once; a multiple of the
// page size.
const verifyWindow = 32 << 20
