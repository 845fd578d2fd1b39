package retention

import (
	"fmt"
	"sort"
	"time"
)

// Snapshot is what retention needs to know of one stored snapshot.
type Snapshot struct {
	// ID identifies the snapshot to the caller (the manifest UUID).
	ID string
	// Group is the snapshot's group within its policy: the canonical form of its grouping
	// label values ("" when the policy has no grouping rules: one group per policy).
	Group string
	// CreatedAt is when the snapshot was committed.
	CreatedAt time.Time
	// LastAccessTime is when a restore last used it; zero means never, and CreatedAt counts.
	LastAccessTime time.Time
}

// lastUse is the later of CreatedAt and LastAccessTime.
func (s Snapshot) lastUse() time.Time {
	if s.LastAccessTime.After(s.CreatedAt) {
		return s.LastAccessTime
	}
	return s.CreatedAt
}

// Rules are one policy's retention settings.
type Rules struct {
	// LastAccessTimeout deletes a snapshot not used for this long; 0 keeps it forever.
	LastAccessTimeout time.Duration
	// MaxPerGroup keeps at most this many snapshots per group, deleting the oldest
	// (by CreatedAt) first; 0 means unlimited.
	MaxPerGroup int
}

// Deletion is a snapshot to delete and why, in words.
type Deletion struct {
	ID     string
	Reason string
}

// Expired reports whether a snapshot last used at lastUse has outlived timeout at now.
// A timeout of 0 or less never expires. A snapshot exactly timeout old is kept.
func Expired(lastUse time.Time, timeout time.Duration, now time.Time) bool {
	return timeout > 0 && now.Sub(lastUse) > timeout
}

// Plan returns the snapshots of one policy that rules say to delete at now: first those
// whose last use (LastAccessTime, or CreatedAt when never accessed) is older than
// LastAccessTimeout, then, among the rest, the oldest of each group beyond MaxPerGroup.
// The result is sorted by group, then CreatedAt, then ID; the input is not modified.
func Plan(snaps []Snapshot, rules Rules, now time.Time) []Deletion {
	var out []Deletion
	var kept []Snapshot
	for _, s := range snaps {
		if Expired(s.lastUse(), rules.LastAccessTimeout, now) {
			out = append(out, Deletion{ID: s.ID, Reason: fmt.Sprintf(
				"not used since %s, longer than lastAccessTimeout %s",
				s.lastUse().UTC().Format(time.RFC3339), FormatDuration(rules.LastAccessTimeout))})
			continue
		}
		kept = append(kept, s)
	}
	out = append(out, OverGroupLimit(kept, rules.MaxPerGroup)...)
	order := map[string]int{}
	for i, s := range sorted(snaps) {
		order[s.ID] = i
	}
	sort.SliceStable(out, func(i, j int) bool { return order[out[i].ID] < order[out[j].ID] })
	return out
}

// OverGroupLimit returns, for each group holding more than limit snapshots, its oldest
// snapshots (by CreatedAt, then ID) beyond limit. limit 0 (or less) means unlimited: nothing.
func OverGroupLimit(snaps []Snapshot, limit int) []Deletion {
	if limit <= 0 {
		return nil
	}
	byGroup := map[string][]Snapshot{}
	for _, s := range sorted(snaps) {
		byGroup[s.Group] = append(byGroup[s.Group], s)
	}
	groups := make([]string, 0, len(byGroup))
	for g := range byGroup {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	var out []Deletion
	for _, g := range groups {
		list := byGroup[g]
		for _, s := range list[:max(len(list)-limit, 0)] {
			out = append(out, Deletion{ID: s.ID, Reason: fmt.Sprintf(
				"group %q holds %d snapshots, more than maxSnapshotCountPerGroup %d; oldest deleted first",
				g, len(list), limit)})
		}
	}
	return out
}

// sorted returns a copy of snaps ordered by group, CreatedAt, then ID.
func sorted(snaps []Snapshot) []Snapshot {
	c := append([]Snapshot(nil), snaps...)
	sort.SliceStable(c, func(i, j int) bool {
		a, b := c[i], c[j]
		if a.Group != b.Group {
			return a.Group < b.Group
		}
		if !a.CreatedAt.Equal(b.CreatedAt) {
			return a.CreatedAt.Before(b.CreatedAt)
		}
		return a.ID < b.ID
	})
	return c
}
