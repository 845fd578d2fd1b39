package storage

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error a store or the pipeline returns names the object URL and
// wraps one of these where it applies, so callers test with errors.Is.
var (
	// ErrNotFound: the object does not exist.
	ErrNotFound = errors.New("object not found")
	// ErrExists: a create-if-absent found the object already there.
	ErrExists = errors.New("already exists")
	// ErrCorrupt: stored or decoded bytes do not match their recorded size or checksum.
	ErrCorrupt = errors.New("corrupt object")
	// ErrOutOfRange: a ranged read starts past the end of the object (Store.GetRange).
	// The store cannot tell whether the object is shorter than it should be; a caller
	// that knows its size (a framed read, from the manifest) treats it as corruption.
	ErrOutOfRange = errors.New("range starts past the end of the object")
)

// CorruptError is a checksum, size or decoding mismatch of one object. It matches
// ErrCorrupt with errors.Is. Its text is "<url>: <what>", e.g.
// "gs://b/p/pages.img.zst: crc32c mismatch: got 1234, want 5678".
type CorruptError struct {
	URL  string
	What string
}

func (e *CorruptError) Error() string { return e.URL + ": " + e.What }

// Is reports whether target is ErrCorrupt.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// Corruptf returns a *CorruptError for the object at url.
func Corruptf(url, format string, args ...any) error {
	return &CorruptError{URL: url, What: fmt.Sprintf(format, args...)}
}

// NotFound returns an error "<url>: object not found" wrapping ErrNotFound.
func NotFound(url string) error { return fmt.Errorf("%s: %w", url, ErrNotFound) }

// Exists returns an error "<url>: already exists" wrapping ErrExists.
func Exists(url string) error { return fmt.Errorf("%s: %w", url, ErrExists) }
