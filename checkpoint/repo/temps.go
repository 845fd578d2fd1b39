package repo

import (
	"context"
	"fmt"
	"time"

	"github.com/podsnapshot/podsnapshot/storage"
)

// TempStore is a store whose uploads write temporary objects (under storage.TempPrefix)
// that an upload cut off by a crash of its process or of the store leaves behind:
// storage/gcs (composite parts) and storage/local (temporary files).
type TempStore interface {
	// StaleTemps returns the temporary objects of uploads that wrote nothing at or after
	// cutoff, names relative to the store root.
	StaleTemps(ctx context.Context, cutoff time.Time) ([]storage.ObjectInfo, error)
	// DeleteTemp deletes one object StaleTemps returned; other names are refused.
	DeleteTemp(ctx context.Context, name string) error
}

// StaleTemps returns the temporary objects of uploads that died (of the whole store,
// whatever their namespace: a temporary object does not say which snapshot it was for),
// written before cutoff. A younger one may belong to an upload in progress. A store that
// writes no temporary objects has none.
func (r *Repo) StaleTemps(ctx context.Context, cutoff time.Time) ([]storage.ObjectInfo, error) {
	ts, ok := r.Store.(TempStore)
	if !ok {
		return nil, nil
	}
	objs, err := ts.StaleTemps(ctx, cutoff)
	if err != nil {
		return nil, fmt.Errorf("list temporary objects of %s: %w", r.Store.URL(""), err)
	}
	return objs, nil
}

// DeleteTemp deletes the temporary object name, one StaleTemps returned.
func (r *Repo) DeleteTemp(ctx context.Context, name string) error {
	ts, ok := r.Store.(TempStore)
	if !ok {
		return fmt.Errorf("%s: the store has no temporary objects", r.Store.URL(name))
	}
	return ts.DeleteTemp(ctx, name)
}
