package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/internal/kubeapi"
	"github.com/podsnapshot/podsnapshot/storage"
)

// syncer runs retention and the reconcile between storage and objects every
// SyncInterval, policy by policy:
//
//   - a committed snapshot in the policy's store without a PodSnapshot gets one (with
//     the status the manifest says, and the finalizer);
//   - a PodSnapshot still AwaitingCheckpoint whose committed manifest is in the store
//     gets the committed status (its node's report was lost: repair);
//   - a Ready PodSnapshot whose manifest is gone from the store gets Ready False/Failed
//     ("files no longer in storage"), and so does one whose manifest a restore marked
//     Failed (a corrupt file: "marked Failed in storage: <reason>");
//   - the policy's retention (lastAccessTimeout, maxSnapshotCountPerGroup) over the
//     store's committed snapshots is carried out as PodSnapshot deletions (the finalizer
//     then deletes the files); a snapshot without an object is deleted from storage;
//   - a Failed PodSnapshot older than FailedTTL is deleted.
//
// Local stores (file://) are read only when this process sees the same directory as the
// nodes (--local-stores); otherwise only the FailedTTL rule applies to their objects.
type syncer struct {
	c    client.Client
	opts Options
	log  logrus.FieldLogger
	// failedSince: when this process first saw each PodSnapshot that is Failed now (by
	// UID). Only sync (one goroutine) uses it.
	failedSince map[types.UID]time.Time
}

// Start runs sync every SyncInterval until ctx ends.
func (s *syncer) Start(ctx context.Context) error {
	t := time.NewTicker(s.opts.SyncInterval)
	defer t.Stop()
	for {
		if err := s.sync(ctx); err != nil && ctx.Err() == nil {
			s.log.WithError(err).Warn("sync of storage and PodSnapshots incomplete")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (s *syncer) sync(ctx context.Context) error {
	var configs v1.PodSnapshotStorageConfigList
	var policies v1.PodSnapshotPolicyList
	var snaps v1.PodSnapshotList
	for _, l := range []client.ObjectList{&configs, &policies, &snaps} {
		if err := s.c.List(ctx, l); err != nil {
			return err
		}
	}
	now := s.opts.Now()
	var errs []error
	cfgs := map[string]*v1.PodSnapshotStorageConfig{}
	for i := range configs.Items {
		cfgs[configs.Items[i].Name] = &configs.Items[i]
	}
	st := &stores{open: map[string]*repo.Repo{}, listed: map[string][]*manifest.Manifest{}}
	defer st.close()
	// unconfirmed: Failed PodSnapshots whose committed manifest this sync found intact in
	// their policy's store. Any agent may write another node's conditions
	// (agent-node-policy.yaml), so a Failed condition alone must not delete files.
	unconfirmed := map[string]bool{}
	for i := range policies.Items {
		p := &policies.Items[i]
		cfg := cfgs[p.Spec.StorageConfigName]
		if cfg == nil {
			continue
		}
		url := cfg.StoreURL()
		if strings.HasPrefix(url, "file://") && !s.opts.LocalStores {
			continue
		}
		if err := s.syncPolicy(ctx, p, url, st, snaps.Items, now, unconfirmed); err != nil {
			errs = append(errs, fmt.Errorf("PodSnapshotPolicy %s/%s: %w", p.Namespace, p.Name, err))
		}
	}
	errs = append(errs, s.expireFailed(ctx, snaps.Items, now, unconfirmed))
	return errors.Join(errs...)
}

// syncPolicy reconciles one policy's snapshots in its store with their objects.
func (s *syncer) syncPolicy(ctx context.Context, p *v1.PodSnapshotPolicy, url string, st *stores, all []v1.PodSnapshot, now time.Time, unconfirmed map[string]bool) error {
	r, listed, err := st.list(ctx, url, p.Namespace)
	if err != nil {
		return err
	}
	stored := map[string]*manifest.Manifest{}
	for _, m := range listed {
		if m.Policy == p.Name {
			stored[m.UUID] = m
		}
	}
	objects := map[string]*v1.PodSnapshot{}
	for i := range all {
		if ps := &all[i]; ps.Namespace == p.Namespace && ps.Spec.PolicyName == p.Name {
			objects[ps.Name] = ps
		}
	}
	var errs []error
	for uuid, m := range stored {
		if objects[uuid] == nil && m.State == manifest.StateCommitted {
			ps, err := s.adopt(ctx, m, url)
			errs = append(errs, err)
			if ps != nil {
				objects[uuid] = ps // retention below deletes it as an object
			}
		}
	}
	for uuid, ps := range objects {
		if m := stored[uuid]; m != nil && m.State == manifest.StateCommitted && ps.DeletionTimestamp == nil && awaiting(ps) {
			errs = append(errs, s.repair(ctx, ps, m, url))
			continue
		}
		if m := stored[uuid]; m != nil && m.State == manifest.StateCommitted && failed(ps) {
			s.log.Warnf("PodSnapshot %s/%s is marked Failed (%s) but its manifest is committed in %s: not expired", ps.Namespace, ps.Name, meta.FindStatusCondition(ps.Status.Conditions, v1.ConditionReady).Message, url)
			unconfirmed[ps.Namespace+"/"+ps.Name] = true
			continue
		}
		if ps.DeletionTimestamp != nil || !meta.IsStatusConditionTrue(ps.Status.Conditions, v1.ConditionReady) {
			continue
		}
		if m := stored[uuid]; m != nil {
			if m.State == manifest.StateFailed {
				// A restore found it corrupt and marked it so in storage (its node's report
				// usually says so first).
				errs = append(errs, kubeapi.IgnoreNotFound(kubeapi.SetSnapshotStatus(ctx, s.c, ps.Namespace, ps.Name, func(ps *v1.PodSnapshot) {
					kubeapi.Unusable(ps, "marked Failed in storage: "+m.Reason, now)
				})))
			}
			continue
		}
		// Only a snapshot of this store whose manifest is really gone: not one the listing
		// missed (a manifest it could not read) nor one of a store the policy no longer
		// names (its files are where they were).
		if !strings.HasPrefix(ps.Status.StoragePath, strings.TrimSuffix(url, "/")+"/") {
			continue
		}
		if _, err := r.Get(ctx, p.Namespace, p.Name, uuid); !errors.Is(err, storage.ErrNotFound) {
			continue
		}
		errs = append(errs, kubeapi.IgnoreNotFound(kubeapi.SetSnapshotStatus(ctx, s.c, ps.Namespace, ps.Name, func(ps *v1.PodSnapshot) {
			kubeapi.Unusable(ps, "files no longer in storage at "+ps.Status.StoragePath, now)
		})))
	}
	rules, err := p.RetentionRules()
	if err != nil {
		return err
	}
	for _, d := range repo.PlanRetention(listed, p.Namespace, p.Name, rules, now) {
		if ps := objects[d.ID]; ps != nil {
			s.log.Infof("retention: deleting PodSnapshot %s/%s (%s)", ps.Namespace, ps.Name, d.Reason)
			errs = append(errs, kubeapi.IgnoreNotFound(s.c.Delete(ctx, ps)))
			continue
		}
		s.log.Infof("retention: deleting snapshot %s/%s from %s (%s; no PodSnapshot)", p.Namespace, d.ID, url, d.Reason)
		errs = append(errs, r.Delete(ctx, stored[d.ID]))
	}
	return errors.Join(errs...)
}

// adopt creates the PodSnapshot of a committed snapshot found in storage and returns it
// (nil when it could not be created).
func (s *syncer) adopt(ctx context.Context, m *manifest.Manifest, url string) (*v1.PodSnapshot, error) {
	view := m.PodSnapshot(url)
	// The labels are the pod's: a pod's label must not say which node's agent owns the
	// object (agent-node-policy.yaml).
	delete(view.Labels, v1.LabelNode)
	ps := &v1.PodSnapshot{
		ObjectMeta: metav1.ObjectMeta{Namespace: view.Namespace, Name: view.Name, Labels: view.Labels,
			Annotations: view.Annotations, Finalizers: []string{kubeapi.Finalizer}},
		Spec: view.Spec,
	}
	if err := s.c.Create(ctx, ps); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return ps, nil
		}
		return nil, fmt.Errorf("create PodSnapshot %s/%s for a snapshot found in storage: %w", view.Namespace, view.Name, err)
	}
	s.log.Infof("PodSnapshot %s/%s created for a snapshot found in %s", view.Namespace, view.Name, url)
	return ps, kubeapi.SetSnapshotStatus(ctx, s.c, view.Namespace, view.Name, func(ps *v1.PodSnapshot) {
		ps.Status.Conditions = view.Status.Conditions
		ps.Status.LastAccessTime = view.Status.LastAccessTime
		ps.Status.StoragePath = view.Status.StoragePath
		ps.Status.SnapshotScope = view.Status.SnapshotScope
	})
}

// awaiting tells whether ps still waits for its checkpoint: Ready False/AwaitingCheckpoint
// and no Checkpoint outcome.
func awaiting(ps *v1.PodSnapshot) bool {
	c := meta.FindStatusCondition(ps.Status.Conditions, v1.ConditionReady)
	return c != nil && c.Status == metav1.ConditionFalse && c.Reason == v1.ReasonAwaitingCheckpoint &&
		meta.FindStatusCondition(ps.Status.Conditions, v1.ConditionCheckpoint) == nil
}

// repair gives PodSnapshot ps, which still waits for its checkpoint although its
// committed manifest m is in the policy's store at url, the committed status (Ready
// True, Checkpoint Succeeded at the manifest's creation, the storage path): the node's
// CheckpointCommitted report was lost (dropped past report_max_files, its node gone) or
// is late, in which case it changes nothing more.
func (s *syncer) repair(ctx context.Context, ps *v1.PodSnapshot, m *manifest.Manifest, url string) error {
	view := m.PodSnapshot(url)
	err := kubeapi.SetSnapshotStatus(ctx, s.c, ps.Namespace, ps.Name, func(ps *v1.PodSnapshot) {
		if !awaiting(ps) {
			return
		}
		if ps.Status.StoragePath == "" {
			ps.Status.StoragePath = view.Status.StoragePath
		}
		if ps.Status.SnapshotScope == "" {
			ps.Status.SnapshotScope = view.Status.SnapshotScope
		}
		if ps.Status.LastAccessTime == nil {
			ps.Status.LastAccessTime = view.Status.LastAccessTime
		}
		kubeapi.Committed(ps, m.CreatedAt)
	})
	if err != nil {
		return kubeapi.IgnoreNotFound(err)
	}
	s.log.Infof("PodSnapshot %s/%s: committed snapshot found in %s while the object still waited for it; status set committed", ps.Namespace, ps.Name, url)
	return nil
}

// expireFailed deletes PodSnapshots whose Ready condition has been Failed for FailedTTL.
func (s *syncer) expireFailed(ctx context.Context, snaps []v1.PodSnapshot, now time.Time, unconfirmed map[string]bool) error {
	var errs []error
	// The TTL runs from when this controller first saw it Failed, not from the
	// condition's lastTransitionTime, which whoever wrote the condition chose. Objects no
	// longer Failed (or gone) are forgotten.
	seen := s.failedSince
	s.failedSince = map[types.UID]time.Time{}
	for i := range snaps {
		ps := &snaps[i]
		if ps.DeletionTimestamp != nil || !failed(ps) || unconfirmed[ps.Namespace+"/"+ps.Name] {
			continue
		}
		since, ok := seen[ps.UID]
		if !ok {
			since = now
		}
		s.failedSince[ps.UID] = since
		if now.Sub(since) < s.opts.FailedTTL {
			continue
		}
		c := meta.FindStatusCondition(ps.Status.Conditions, v1.ConditionReady)
		s.log.Infof("deleting PodSnapshot %s/%s: Failed for over %s (%s)", ps.Namespace, ps.Name, s.opts.FailedTTL, c.Message)
		errs = append(errs, kubeapi.IgnoreNotFound(s.c.Delete(ctx, ps)))
	}
	return errors.Join(errs...)
}

// stores opens each store once per sync and lists each namespace of it once, however
// many policies use them.
type stores struct {
	open   map[string]*repo.Repo           // by store URL
	listed map[string][]*manifest.Manifest // by store URL + "\x00" + namespace
}

func (st *stores) list(ctx context.Context, url, namespace string) (*repo.Repo, []*manifest.Manifest, error) {
	r := st.open[url]
	if r == nil {
		s, err := storage.Open(ctx, url)
		if err != nil {
			return nil, nil, fmt.Errorf("open store %s: %w", url, err)
		}
		r = &repo.Repo{Store: s}
		st.open[url] = r
	}
	key := url + "\x00" + namespace
	if ms, ok := st.listed[key]; ok {
		return r, ms, nil
	}
	// Manifests that cannot be read are left out here; nothing is concluded from their
	// absence (see Unusable above: a read must say not found).
	ms, _, err := r.List(ctx, namespace)
	if err != nil {
		return nil, nil, fmt.Errorf("list store %s: %w", url, err)
	}
	st.listed[key] = ms
	return r, ms, nil
}

func (st *stores) close() {
	for _, r := range st.open {
		r.Store.Close()
	}
}

// failed tells whether ps's Ready condition says Failed.
func failed(ps *v1.PodSnapshot) bool {
	c := meta.FindStatusCondition(ps.Status.Conditions, v1.ConditionReady)
	return c != nil && c.Reason == v1.ReasonFailed
}
