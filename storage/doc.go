// Package storage is the object store that snapshots live in: a small interface over
// Cloud Storage (storage/gcs) and a local directory (storage/local), plus the streaming
// compression and checksum pipeline that snapshot files go through on their way in and out.
// It knows nothing of containers.
package storage
