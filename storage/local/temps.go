package local

import (
	"context"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podsnapshot/podsnapshot/storage"
)

// StaleTemps returns the temporary files of writes that ended without their rename (the
// process died mid-Put) and were last written before cutoff, named relative to the root
// ("ns/policy/uuid/.podsnapshot-tmp-pages.img.zst-123"), sorted. A younger one may
// belong to a Put in progress.
func (s *Store) StaleTemps(ctx context.Context, cutoff time.Time) ([]storage.ObjectInfo, error) {
	rootfd, err := s.openRoot()
	if err != nil {
		return nil, fmt.Errorf("list temporary files of %s: %w", s.URL(""), err)
	}
	defer unix.Close(rootfd)
	var out []storage.ObjectInfo
	enter := func(rel string) bool { return !storage.IsTemp(rel) }
	err = walk(ctx, rootfd, "", enter, func(dirfd int, rel string, d fs.DirEntry) error {
		if !d.Type().IsRegular() || !strings.HasPrefix(d.Name(), storage.TempPrefix) {
			return nil
		}
		var st unix.Stat_t
		if unix.Fstatat(dirfd, d.Name(), &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			return nil // renamed into place or removed meanwhile
		}
		if mtime := time.Unix(st.Mtim.Unix()); mtime.Before(cutoff) {
			out = append(out, storage.ObjectInfo{Name: rel, Size: st.Size, Updated: mtime})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list temporary files of %s: %w", s.URL(""), err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// DeleteTemp deletes a temporary file StaleTemps returned, and the directories it leaves
// empty. Other names are refused: this is no way around Delete's name check.
func (s *Store) DeleteTemp(_ context.Context, name string) error {
	dir, base := split(name)
	if !strings.HasPrefix(base, storage.TempPrefix+"-") || (dir != "" && storage.CheckName(dir) != nil) {
		return fmt.Errorf("%s: not a temporary file name", s.URL(name))
	}
	return s.remove(name)
}
