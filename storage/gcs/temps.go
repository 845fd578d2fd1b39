package gcs

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	gcs "cloud.google.com/go/storage"
	"google.golang.org/api/iterator"

	"github.com/podsnapshot/podsnapshot/storage"
)

// StaleTemps returns the temporary objects (parts and intermediate composes, named
// "<TempPrefix>/<upload id>/<leaf>" relative to the store root) of uploads that wrote
// nothing at or after cutoff: what an upload leaves when the store or the process died
// before its own cleanup ran. An upload with any younger temporary object may still be
// running, and all of its objects are left alone. Sorted by name.
func (s *Store) StaleTemps(ctx context.Context, cutoff time.Time) ([]storage.ObjectInfo, error) {
	root := s.key(storage.TempPrefix) + "/"
	q := &gcs.Query{Prefix: root}
	if err := q.SetAttrSelection([]string{"Name", "Size", "CRC32C", "Updated"}); err != nil {
		return nil, err
	}
	byUpload := map[string][]storage.ObjectInfo{}
	young := map[string]bool{}
	it := s.bucket.Objects(ctx, q)
	for {
		a, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list temporary objects %s/: %w", s.URL(storage.TempPrefix), err)
		}
		rel := strings.TrimPrefix(a.Name, root)
		id, _, _ := strings.Cut(rel, "/")
		byUpload[id] = append(byUpload[id], info(storage.TempPrefix+"/"+rel, a))
		if !a.Updated.Before(cutoff) {
			young[id] = true
		}
	}
	var out []storage.ObjectInfo
	for id, objs := range byUpload {
		if !young[id] {
			out = append(out, objs...)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// DeleteTemp deletes one temporary object named as StaleTemps names it. A name that is
// not under TempPrefix is refused: this is no way around Delete's name check. (Object
// names are flat: "<TempPrefix>/../x" is a name under TempPrefix too, not a path.)
func (s *Store) DeleteTemp(ctx context.Context, name string) error {
	if rest, ok := strings.CutPrefix(name, storage.TempPrefix+"/"); !ok || rest == "" {
		return fmt.Errorf("%s: not a temporary object name", s.URL(name))
	}
	if err := s.bucket.Object(s.key(name)).Delete(ctx); err != nil {
		return s.err(name, err)
	}
	return nil
}
