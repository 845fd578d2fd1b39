package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
)

// podTokens writes, for each pod of its node that a policy with a podKSA storage config
// (gcs.tokenSource: podKSA) selects, a token of the pod's service account to
// <dir>/<pod uid>: minted with the TokenRequest API, bound to the pod (the API server
// refuses it once the pod is gone), with the audience the shim's Security Token Service
// exchange expects. The shim reads the file at its sandbox's Create and at each exchange;
// it never calls the API server. A token is refreshed when a fifth of its life is left
// and removed when its pod is deleted or ends, or no longer needs one. Files are 0600 in
// a 0700 directory, written atomically; a token is never logged.
type podTokens struct {
	c        client.Client
	node     string
	dir      string
	audience string
	// lifetime is the requested token life; the API server may grant a different one.
	lifetime time.Duration
	log      logrus.FieldLogger
	now      func() time.Time

	// mu guards refreshAt.
	mu sync.Mutex
	// refreshAt is when each written token (by pod UID) is minted again.
	refreshAt map[types.UID]time.Time
}

// tokenLifetime is the life podTokens asks for: an hour, the default of projected
// service account tokens.
const tokenLifetime = time.Hour

func (t *podTokens) setup(mgr ctrl.Manager) error {
	if t.lifetime == 0 {
		t.lifetime = tokenLifetime
	}
	t.refreshAt = map[types.UID]time.Time{}
	if err := mgr.Add(manager.RunnableFunc(t.sweepAtStart)); err != nil {
		return err
	}
	// A policy or storage config that comes or changes after a pod (one kubectl apply of
	// both) decides its token too: every pod of the node is looked at again.
	allPods := handler.EnqueueRequestsFromMapFunc(t.nodePods)
	return ctrl.NewControllerManagedBy(mgr).Named("pod-token").For(&corev1.Pod{}).
		Watches(&v1.PodSnapshotPolicy{}, allPods).
		Watches(&v1.PodSnapshotStorageConfig{}, allPods).
		Complete(t)
}

// nodePods lists the node's pods, as requests.
func (t *podTokens) nodePods(ctx context.Context, _ client.Object) []reconcile.Request {
	var pods corev1.PodList
	if err := t.c.List(ctx, &pods); err != nil {
		t.log.WithError(err).Warn("pod tokens: list the node's pods")
		return nil
	}
	var reqs []reconcile.Request
	for _, p := range pods.Items {
		if p.Spec.NodeName == t.node {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&p)})
		}
	}
	return reqs
}

// Reconcile writes, refreshes or removes the token of one pod.
func (t *podTokens) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var pod corev1.Pod
	err := t.c.Get(ctx, req.NamespacedName, &pod)
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, t.sweep(ctx) // its UID is no longer known here
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if pod.Spec.NodeName != t.node || pod.DeletionTimestamp != nil ||
		pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return reconcile.Result{}, t.remove(pod.UID)
	}
	need, err := t.needsToken(ctx, &pod)
	if err != nil {
		return reconcile.Result{}, err // a token already written stays: it may still be needed
	}
	if !need {
		return reconcile.Result{}, t.remove(pod.UID)
	}
	t.mu.Lock()
	at, ok := t.refreshAt[pod.UID]
	t.mu.Unlock()
	if now := t.now(); ok && now.Before(at) {
		return reconcile.Result{RequeueAfter: at.Sub(now)}, nil
	}
	at, err = t.write(ctx, &pod)
	if err != nil {
		t.log.WithError(err).WithField("pod", req.NamespacedName).Warn("no storage token for the pod: it starts cold")
		return reconcile.Result{}, err
	}
	return reconcile.Result{RequeueAfter: at.Sub(t.now())}, nil
}

// minRefresh is the shortest time between two tokens of a pod, whatever life the API
// server granted.
const minRefresh = time.Minute

// needsToken reports whether a policy of the pod's namespace selects it and names a
// storage config with tokenSource podKSA that allows the namespace.
func (t *podTokens) needsToken(ctx context.Context, pod *corev1.Pod) (bool, error) {
	var policies v1.PodSnapshotPolicyList
	if err := t.c.List(ctx, &policies, client.InNamespace(pod.Namespace)); err != nil {
		return false, err
	}
	for _, p := range policies.Items {
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err != nil || !sel.Matches(labels.Set(pod.Labels)) {
			continue
		}
		var sc v1.PodSnapshotStorageConfig
		if err := t.c.Get(ctx, client.ObjectKey{Name: p.Spec.StorageConfigName}, &sc); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return false, err
		}
		// A config that does not allow the namespace is one the node's loader refuses
		// for this policy: no token for a pod the shim will not snapshot.
		if sc.PodIdentity() && sc.AllowsNamespace(p.Namespace) {
			return true, nil
		}
	}
	return false, nil
}

// write mints the pod's token and writes it to <dir>/<uid>; it returns when to mint the
// next: with a fifth of the granted life left, and at least minRefresh from now.
func (t *podTokens) write(ctx context.Context, pod *corev1.Pod) (time.Time, error) {
	if t.audience == "" {
		return time.Time{}, errors.New("the node config sets no pod_identity.workload_identity_provider, the audience of pod tokens")
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	secs := int64(t.lifetime.Seconds())
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:         []string{t.audience},
		ExpirationSeconds: &secs,
		BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	acct := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: pod.Namespace}}
	if err := t.c.SubResource("token").Create(ctx, acct, tr); err != nil {
		return time.Time{}, fmt.Errorf("TokenRequest for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return time.Time{}, fmt.Errorf("token directory: %w", err)
	}
	if err := writeAtomic(filepath.Join(t.dir, string(pod.UID)), []byte(tr.Status.Token), 0o600); err != nil {
		return time.Time{}, fmt.Errorf("the pod's token: %w", err)
	}
	exp, now := tr.Status.ExpirationTimestamp.Time, t.now()
	at := now.Add(max(exp.Sub(now)*4/5, minRefresh))
	t.mu.Lock()
	t.refreshAt[pod.UID] = at
	t.mu.Unlock()
	t.log.WithFields(logrus.Fields{"pod": pod.Namespace + "/" + pod.Name, "serviceAccount": sa, "expires": exp.Format(time.RFC3339)}).
		Info("storage token for the pod's service account written")
	return at, nil
}

// remove deletes the token of pod uid, if any.
func (t *podTokens) remove(uid types.UID) error {
	t.mu.Lock()
	delete(t.refreshAt, uid)
	t.mu.Unlock()
	if err := os.Remove(filepath.Join(t.dir, string(uid))); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove the token of pod %s: %w", uid, err)
	}
	return nil
}

// sweep removes the tokens of pods that are no longer on the node.
func (t *podTokens) sweep(ctx context.Context) error {
	entries, err := os.ReadDir(t.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("token directory: %w", err)
	}
	var pods corev1.PodList
	if err := t.c.List(ctx, &pods); err != nil {
		return err
	}
	live := map[string]bool{}
	for _, p := range pods.Items {
		if p.Spec.NodeName == t.node {
			live[string(p.UID)] = true
		}
	}
	var errs []error
	for _, e := range entries {
		switch {
		case strings.HasPrefix(e.Name(), tmpPrefix):
			// A write in flight, or one a crash left (holding a live token): gone after a minute.
			if fi, err := e.Info(); err == nil && t.now().Sub(fi.ModTime()) > time.Minute {
				errs = append(errs, os.Remove(filepath.Join(t.dir, e.Name())))
			}
		case !live[e.Name()]:
			errs = append(errs, t.remove(types.UID(e.Name())))
		}
	}
	return errors.Join(errs...)
}

// sweepAtStart sweeps once the cache has synced: tokens of pods deleted while the agent
// was down.
func (t *podTokens) sweepAtStart(ctx context.Context) error {
	if err := t.sweep(ctx); err != nil {
		t.log.WithError(err).Warn("sweep of pod tokens")
	}
	return nil
}
