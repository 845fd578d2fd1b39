package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/sirupsen/logrus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/yaml"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
)

// MirrorFile is the file of the policy directory the agent owns: every
// PodSnapshotStorageConfig and PodSnapshotPolicy of the cluster, as one YAML stream.
// Files written by hand beside it keep working (on a duplicate name the policy loader
// keeps the first file in name order and reports the other).
const MirrorFile = "kubernetes.yaml"

// mirror keeps MirrorFile equal to the cluster's storage configs and policies. It
// reconciles one constant key: every change rewrites the whole file from the informer
// cache, atomically (a temporary file renamed over it), so the shim's policy loader sees
// the old set or the new one, never half. While the API server is unreachable the file
// is left as it was: the node keeps restoring from its last known policies.
type mirror struct {
	c   client.Client
	dir string
	log logrus.FieldLogger
}

var mirrorKey = reconcile.Request{NamespacedName: client.ObjectKey{Name: "policy-dir"}}

func (m *mirror) setup(mgr ctrl.Manager) error {
	all := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{mirrorKey}
	})
	return ctrl.NewControllerManagedBy(mgr).Named("policy-mirror").
		Watches(&v1.PodSnapshotPolicy{}, all).
		Watches(&v1.PodSnapshotStorageConfig{}, all).
		Complete(m)
}

// Reconcile writes MirrorFile from the cache.
func (m *mirror) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	var configs v1.PodSnapshotStorageConfigList
	if err := m.c.List(ctx, &configs); err != nil {
		return reconcile.Result{}, err
	}
	var policies v1.PodSnapshotPolicyList
	if err := m.c.List(ctx, &policies); err != nil {
		return reconcile.Result{}, err
	}
	data, err := mirrorYAML(configs.Items, policies.Items)
	if err != nil {
		return reconcile.Result{}, err
	}
	changed, err := writeIfChanged(filepath.Join(m.dir, MirrorFile), data)
	if err != nil {
		return reconcile.Result{}, err
	}
	if changed {
		m.log.WithField("file", filepath.Join(m.dir, MirrorFile)).
			Infof("policy directory updated: %d storage configs, %d policies", len(configs.Items), len(policies.Items))
	}
	return reconcile.Result{}, nil
}

// mirrorYAML renders the objects as the policy loader reads them: apiVersion and kind
// set, metadata reduced to name, namespace, uid, generation and creationTimestamp (the
// loader orders policies by it), spec as stored; in a stable order.
func mirrorYAML(configs []v1.PodSnapshotStorageConfig, policies []v1.PodSnapshotPolicy) ([]byte, error) {
	sort.Slice(configs, func(i, j int) bool { return configs[i].Name < configs[j].Name })
	sort.Slice(policies, func(i, j int) bool {
		if policies[i].Namespace != policies[j].Namespace {
			return policies[i].Namespace < policies[j].Namespace
		}
		return policies[i].Name < policies[j].Name
	})
	var b bytes.Buffer
	b.WriteString("# Written by podsnapshot-agent from the Kubernetes API; do not edit (it is rewritten).\n")
	add := func(obj any) error {
		out, err := yaml.Marshal(obj)
		if err != nil {
			return err
		}
		b.WriteString("---\n")
		b.Write(out)
		return nil
	}
	for _, c := range configs {
		o := v1.PodSnapshotStorageConfig{
			TypeMeta:   metav1.TypeMeta{APIVersion: v1.SchemeGroupVersion.String(), Kind: v1.KindStorageConfig},
			ObjectMeta: slimMeta(c.ObjectMeta),
			Spec:       c.Spec,
		}
		if err := add(o); err != nil {
			return nil, fmt.Errorf("PodSnapshotStorageConfig %s: %w", c.Name, err)
		}
	}
	for _, p := range policies {
		o := v1.PodSnapshotPolicy{
			TypeMeta:   metav1.TypeMeta{APIVersion: v1.SchemeGroupVersion.String(), Kind: v1.KindPolicy},
			ObjectMeta: slimMeta(p.ObjectMeta),
			Spec:       p.Spec,
		}
		if err := add(o); err != nil {
			return nil, fmt.Errorf("PodSnapshotPolicy %s/%s: %w", p.Namespace, p.Name, err)
		}
	}
	return b.Bytes(), nil
}

func slimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, Generation: m.Generation,
		CreationTimestamp: m.CreationTimestamp}
}

// writeIfChanged replaces path with data unless it already holds exactly data: a
// temporary file beside it (hidden, so the loader skips it), synced, renamed over it.
func writeIfChanged(path string, data []byte) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("policy directory %s: %w", dir, err)
	}
	if err := writeAtomic(path, data, 0o644); err != nil {
		return false, err
	}
	return true, nil
}

// tmpPrefix starts the names of the temporary files writeAtomic renames into place.
const tmpPrefix = ".podsnapshot-agent-"

// writeAtomic writes data to path with mode through a synced temporary file in the same
// directory renamed over it: a reader sees the old file or the new one, never half.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), tmpPrefix)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
