package repo

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/retention"
)

// PlanRetention returns what rules say to delete at now among the committed snapshots
// of (namespace, policy) in ms (retention.Plan: lastAccessTimeout first, then the oldest
// of each group beyond maxSnapshotCountPerGroup). Each Deletion's ID is a UUID of ms;
// snapshots of other policies and those not committed (Failed ones are the caller's
// business) are never in it. ms is not modified.
func PlanRetention(ms []*manifest.Manifest, namespace, policy string, rules retention.Rules, now time.Time) []retention.Deletion {
	var owned []retention.Snapshot
	for _, m := range ms {
		if m.Namespace == namespace && m.Policy == policy && m.State == manifest.StateCommitted {
			owned = append(owned, m.RetentionSnapshot())
		}
	}
	return retention.Plan(owned, rules, now)
}

// ApplyRetention lists the snapshots of namespace, plans with PlanRetention and deletes
// what the plan says, in its order. It returns the deletions that succeeded; a listing
// or deletion that failed is in err (the other deletions are done all the same).
// Manifests that cannot be read are left alone. Rules that keep everything (zero
// LastAccessTimeout and MaxPerGroup) cost no listing.
func (r *Repo) ApplyRetention(ctx context.Context, namespace, policy string, rules retention.Rules, now time.Time) (deleted []retention.Deletion, err error) {
	if rules.LastAccessTimeout <= 0 && rules.MaxPerGroup <= 0 {
		return nil, nil
	}
	ms, _, err := r.List(ctx, namespace)
	if err != nil {
		return nil, fmt.Errorf("retention of policy %s/%s: list snapshots: %w", namespace, policy, err)
	}
	byID := map[string]*manifest.Manifest{}
	for _, m := range ms {
		if m.Policy == policy {
			byID[m.UUID] = m
		}
	}
	var errs []error
	for _, d := range PlanRetention(ms, namespace, policy, rules, now) {
		if err := r.Delete(ctx, byID[d.ID]); err != nil {
			errs = append(errs, fmt.Errorf("retention: delete snapshot %s/%s: %w", namespace, d.ID, err))
			continue
		}
		deleted = append(deleted, d)
	}
	return deleted, errors.Join(errs...)
}
