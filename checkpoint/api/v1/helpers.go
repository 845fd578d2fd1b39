package v1

import (
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/podsnapshot/podsnapshot/checkpoint/retention"
)

// StoreURL is where the config stores snapshots: "gs://<bucket>" or "gs://<bucket>/<path>"
// for gcs, "file://<path>" (e.g. "file:///var/lib/podsnapshot") for local. It is "" for a
// config that sets neither; Validate rejects those.
func (c *PodSnapshotStorageConfig) StoreURL() string {
	s := c.Spec.SnapshotStorageConfig
	switch {
	case s.GCS != nil:
		u := url.URL{Scheme: "gs", Host: s.GCS.Bucket}
		if p := strings.Trim(s.GCS.Path, "/"); p != "" {
			u.Path = "/" + p
		}
		return u.String()
	case s.Local != nil:
		return (&url.URL{Scheme: "file", Path: s.Local.Path}).String()
	}
	return ""
}

// PodIdentity reports whether pods read and write the config's store with their own
// service account (gcs.tokenSource: podKSA) rather than the node's credentials.
func (c *PodSnapshotStorageConfig) PodIdentity() bool {
	g := c.Spec.SnapshotStorageConfig.GCS
	return g != nil && g.TokenSource == TokenSourcePodKSA
}

// AllowsNamespace reports whether policies of namespace ns may name the config: its
// spec.allowedNamespaces is unset or empty (any namespace), or holds ns.
func (c *PodSnapshotStorageConfig) AllowsNamespace(ns string) bool {
	return len(c.Spec.AllowedNamespaces) == 0 || slices.Contains(c.Spec.AllowedNamespaces, ns)
}

// RetentionRules returns the policy's retention settings in the form package retention
// takes: LastAccessTimeout parsed (0 when unset: keep) and MaxPerGroup (0: unlimited).
// It fails only for a lastAccessTimeout that Validate would reject.
func (p *PodSnapshotPolicy) RetentionRules() (retention.Rules, error) {
	var r retention.Rules
	if rc := p.Spec.RetentionConfig; rc != nil && rc.LastAccessTimeout != "" {
		d, err := retention.ParseDuration(rc.LastAccessTimeout)
		if err != nil {
			return r, fmt.Errorf("policy %s/%s: spec.retentionConfig.lastAccessTimeout %q: %w", p.Namespace, p.Name, rc.LastAccessTimeout, err)
		}
		r.LastAccessTimeout = d
	}
	if g := p.Spec.SnapshotGroupingRules; g != nil && g.GroupRetentionPolicy != nil {
		r.MaxPerGroup = int(g.GroupRetentionPolicy.MaxSnapshotCountPerGroup)
	}
	return r, nil
}

// GroupLabels returns spec.snapshotGroupingRules.groupByLabelValue.labels, or nil.
func (p *PodSnapshotPolicy) GroupLabels() []string {
	if g := p.Spec.SnapshotGroupingRules; g != nil && g.GroupByLabelValue != nil {
		return g.GroupByLabelValue.Labels
	}
	return nil
}
