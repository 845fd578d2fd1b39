// Package storage is the object store that snapshots live in: a small interface over
// Cloud Storage (storage/gcs) and a local directory (storage/local), plus the streaming
// compression and checksum pipeline that snapshot files go through on their way in and out.
// It knows nothing of containers.
//
// Stores: Store is a flat namespace of immutable objects under a root, written whole by a
// streaming Put of unknown size (or PutIfAbsent, for manifests), read by Get and GetRange.
// Open("gs://bucket/prefix") and Open("file:///dir") (or "/dir") pick the backend through a
// registry the backends fill from init, so this package imports neither: a program imports
// the backends it wants, e.g.
//
//	import _ "github.com/podsnapshot/podsnapshot/storage/gcs"
//	import _ "github.com/podsnapshot/podsnapshot/storage/local"
//
// Pipeline: Upload streams a file through a Codec (zstd or none) into a store and returns
// the FileInfo a manifest records (raw and stored size, xxHash64 of the raw bytes, CRC32C of
// the stored bytes); Download streams it back, decompresses and verifies all four. Memory
// is bounded whatever the size: the codec's window and jobs, a few 1 MiB hashing chunks,
// and the store's parts or read chunks in flight (Options).
//
// Errors name the object URL, e.g. "gs://b/p/pages.img.zst: crc32c mismatch: got 1, want
// 2", and wrap ErrNotFound, ErrExists or ErrCorrupt where they apply.
package storage
