package storage

// FileInfo describes one snapshot file as stored: what the manifest records for each file
// and what a download verifies against.
type FileInfo struct {
	// Name is the object name relative to the store root, e.g. "ns/policy/uuid/pages.img.zst".
	Name string `json:"name"`
	// RawSize is the size in bytes of the uncompressed file.
	RawSize int64 `json:"rawSize"`
	// StoredSize is the size in bytes of the object in the store.
	StoredSize int64 `json:"storedSize"`
	// Codec is the compression codec name: "zstd" or "none".
	Codec string `json:"codec"`
	// XXH64 is the xxHash64 of the raw (uncompressed) bytes, 16 hex digits: the content
	// checksum zstd itself uses, and fast enough (about 10 GB/s) not to slow the upload,
	// where sha256 cost a core-second per GB. It catches corruption and codec faults;
	// CRC32C covers the stored bytes end to end. It is no defence against a writer of
	// the store, who could rewrite the manifest as well.
	XXH64 string `json:"xxh64"`
	// CRC32C is the Castagnoli CRC32 of the stored bytes, as Cloud Storage computes it.
	CRC32C uint32 `json:"crc32c"`
	// FrameSize is the raw bytes per frame of a framed file (frames.go); 0 for a file
	// stored as one stream (manifests written before frames, and any file Upload wrote).
	FrameSize int64 `json:"frameSize,omitempty"`
	// Frames are a framed file's frames in order: stored size and CRC32C of each.
	Frames []Frame `json:"frames,omitempty"`
}
