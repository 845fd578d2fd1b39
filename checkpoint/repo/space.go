package repo

import (
	"errors"
	"fmt"
	"math"

	"golang.org/x/sys/unix"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/storage"
)

// ErrNoSpace is wrapped by Download's error for a snapshot larger than the free space
// where it would land. The snapshot is fine (not storage.ErrCorrupt); the node is full.
var ErrNoSpace = errors.New("not enough free disk space")

// spaceReserveDiv keeps 1/spaceReserveDiv (5%) of a filesystem's free space free after
// a download: the work dir and the cache share the disk with the pods' checkpoints, and
// filling it to the last byte fails whatever writes next.
const spaceReserveDiv = 20

// freeSpace returns the bytes an unprivileged writer may still use on the filesystem of
// path (statfs f_bavail × f_bsize). A variable so tests can shrink the disk.
var freeSpace = func(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return int64(min(st.Bavail, math.MaxInt64/uint64(max(st.Bsize, 1)))) * st.Bsize, nil
}

// linksInto reports whether the store hard-links uncompressed files into dir: a Linker
// whose root is on dir's filesystem (across filesystems the link fails and the file is
// copied, which takes its size).
func (r *Repo) linksInto(dir string) bool {
	if _, ok := r.Store.(storage.Linker); !ok {
		return false
	}
	rooted, ok := r.Store.(interface{ Root() string })
	if !ok {
		return false
	}
	var a, b unix.Stat_t
	return unix.Stat(rooted.Root(), &a) == nil && unix.Stat(dir, &b) == nil && a.Dev == b.Dev
}

// checkSpace returns an error wrapping ErrNoSpace when the raw size of m's files does not
// fit in the free space of dir's filesystem less the 5% reserve. Files a Linker store
// hard-links (codec none) take no space and are not counted; should the link fail, the
// copy is still bounded by each file's raw size (storage.Download). The sum saturates
// instead of overflowing, so hostile sizes cannot wrap it below the free space.
func (r *Repo) checkSpace(m *manifest.Manifest, dir string) error {
	links := r.linksInto(dir)
	var need int64
	for _, f := range m.Files {
		if links && f.Codec == storage.CodecNone {
			continue
		}
		if f.RawSize > math.MaxInt64-need {
			need = math.MaxInt64
			break
		}
		need += f.RawSize
	}
	if need == 0 {
		return nil
	}
	free, err := freeSpace(dir)
	if err != nil {
		return err
	}
	if usable := free - free/spaceReserveDiv; need > usable {
		return fmt.Errorf("%w: the snapshot needs %d bytes (raw size of its files), %s has %d bytes free of which %d may be used (%d%% kept free)",
			ErrNoSpace, need, dir, free, usable, 100/spaceReserveDiv)
	}
	return nil
}
