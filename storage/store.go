package storage

import (
	"context"
	"io"
	"time"
)

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	// Name is the object name relative to the store root.
	Name string
	// Size is the object size in bytes.
	Size int64
	// CRC32C is the Castagnoli CRC32 of the object bytes; valid when HasCRC32C.
	CRC32C uint32
	// HasCRC32C is false where the store does not record a checksum (a local store on a
	// filesystem without user xattrs).
	HasCRC32C bool
	// Updated is when the object was last written.
	Updated time.Time
}

// Store is a flat namespace of immutable objects under one root (a bucket prefix or a
// directory). Names are relative to the root and use "/" as separator; see CheckName.
//
// Every error names the object URL (Store.URL). A missing object is an error wrapping
// ErrNotFound; a create-if-absent loser gets one wrapping ErrExists. Implementations are
// safe for concurrent use.
type Store interface {
	// Put stores the whole of r, of any size not known in advance, under name, replacing any
	// object there. The object appears atomically when r is drained and all bytes are
	// durable; if r fails or ctx ends first, nothing appears under name and no temporary
	// data is left behind. It returns the stored size in bytes and CRC32C.
	Put(ctx context.Context, name string, r io.Reader) (ObjectInfo, error)

	// PutIfAbsent is Put that succeeds only if name does not exist yet. Of concurrent
	// writers of one name exactly one wins; the others get an error wrapping ErrExists
	// ("<url>: already exists").
	PutIfAbsent(ctx context.Context, name string, r io.Reader) (ObjectInfo, error)

	// Get streams the whole object. Where the store records a CRC32C, the reader checks it
	// at EOF and returns a *CorruptError instead of io.EOF on mismatch.
	Get(ctx context.Context, name string) (io.ReadCloser, error)

	// GetRange streams length bytes from offset off; length < 0 reads to the end. A range
	// past the end is cut short at the end; off > size is an error wrapping ErrOutOfRange.
	GetRange(ctx context.Context, name string, off, length int64) (io.ReadCloser, error)

	// Stat returns the object's info.
	Stat(ctx context.Context, name string) (ObjectInfo, error)

	// List returns the objects whose names start with prefix (a plain string prefix, not a
	// directory), sorted by name. Temporary objects of uploads in progress are not listed.
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)

	// Delete removes the object; deleting a missing object returns an ErrNotFound error.
	Delete(ctx context.Context, name string) error

	// URL returns the URL of name, e.g. "gs://bucket/prefix/name" or "file:///root/name".
	// URL("") is the root.
	URL(name string) string

	// Close releases the store's resources.
	Close() error
}
