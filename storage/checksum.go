package storage

import (
	"hash/crc32"
	"io"
)

// Castagnoli is the CRC32C table, the checksum Cloud Storage keeps for every object.
var Castagnoli = crc32.MakeTable(crc32.Castagnoli)

// VerifyingReader wraps the stream of a whole object. It counts and checksums what passes
// through and, at EOF, returns a *CorruptError naming url instead of io.EOF when the size
// (bytes) or CRC32C differ from want. Close closes rc.
func VerifyingReader(rc io.ReadCloser, url string, wantSize int64, wantCRC uint32) io.ReadCloser {
	return &verifyingReader{rc: rc, url: url, wantSize: wantSize, wantCRC: wantCRC}
}

type verifyingReader struct {
	rc       io.ReadCloser
	url      string
	wantSize int64
	wantCRC  uint32
	n        int64
	crc      uint32
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	n, err := v.rc.Read(p)
	v.n += int64(n)
	v.crc = crc32.Update(v.crc, Castagnoli, p[:n])
	if err == io.EOF {
		if v.n != v.wantSize {
			return n, Corruptf(v.url, "size mismatch: got %d bytes, want %d", v.n, v.wantSize)
		}
		if v.crc != v.wantCRC {
			return n, Corruptf(v.url, "crc32c mismatch: got %d, want %d", v.crc, v.wantCRC)
		}
	}
	return n, err
}

func (v *verifyingReader) Close() error { return v.rc.Close() }
