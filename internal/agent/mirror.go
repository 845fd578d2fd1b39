package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/yaml"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/policy"
)

// The agent's files in the policy directory. Files written by hand beside them keep
// working (on a duplicate name the policy loader keeps the first file in name order and
// reports the other); a hand-written file named like one of them is replaced or removed.
const (
	// StorageConfigFile holds every PodSnapshotStorageConfig of the cluster.
	StorageConfigFile = "kubernetes-storageconfigs.yaml"
	// namespaceFilePrefix and namespaceFileSuffix enclose a namespace's name in the name
	// of its file (NamespaceFile). A namespace name is a DNS label: safe in a file name.
	namespaceFilePrefix = "kubernetes-ns-"
	namespaceFileSuffix = ".yaml"
	// legacyMirrorFile is the one file of every config and policy that agents before
	// issue 27 wrote; it is removed.
	legacyMirrorFile = "kubernetes.yaml"
)

// NamespaceFile is the name of the file holding namespace ns's PodSnapshotPolicies,
// "kubernetes-ns-<ns>.yaml".
func NamespaceFile(ns string) string { return namespaceFilePrefix + ns + namespaceFileSuffix }

// ReasonPolicyNotMirrored is the reason of the Warning Event recorded on a policy whose
// namespace's file the agent could not replace.
const ReasonPolicyNotMirrored = "PolicyNotMirrored"

// mirror keeps the policy directory equal to the cluster's storage configs and policies:
// the configs in StorageConfigFile, each namespace's policies in NamespaceFile(ns), so a
// namespace whose policies cannot be loaded (too many for a file's limit) loses only its
// own. It reconciles one constant key: every change renders every file from the informer
// cache and replaces those that changed, each atomically (a temporary file renamed over
// it), so the shim's policy loader sees a file's old content or its new one, never half.
// A new content that the loader would not read whole (policy.CheckFile: over
// policy.MaxFileSize, or a document it would skip) does not replace the file: the node
// keeps that file's last good policies, the agent logs why and records a Warning Event
// (ReasonPolicyNotMirrored) on the namespace's policy at fault. Files of namespaces without
// policies, and the legacy kubernetes.yaml, are removed. While the API server is
// unreachable the files are left as they are: the node keeps restoring from its last
// known policies.
type mirror struct {
	c    client.Client
	dir  string
	node string
	log  logrus.FieldLogger

	// refused maps a file name to the hash of the content last refused for it, so that
	// the same refusal is logged and recorded once, not at every change of the cluster's
	// policies. Only Reconcile uses it, and controller-runtime never runs it twice at
	// once for the one key: no lock.
	refused map[string][sha256.Size]byte
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

// mirrorFile is one file the mirror wants in the policy directory.
type mirrorFile struct {
	name string
	data []byte
	// policies are the namespace's policies in the file (none for StorageConfigFile).
	policies []v1.PodSnapshotPolicy
}

// Reconcile writes the mirror's files from the cache. It fails when a file could not be
// written or removed (the others are written all the same), so that it is retried; a
// refused content is not a failure (retrying would not change it).
func (m *mirror) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	var configs v1.PodSnapshotStorageConfigList
	if err := m.c.List(ctx, &configs); err != nil {
		return reconcile.Result{}, err
	}
	var policies v1.PodSnapshotPolicyList
	if err := m.c.List(ctx, &policies); err != nil {
		return reconcile.Result{}, err
	}
	files, err := mirrorFiles(configs.Items, policies.Items)
	if err != nil {
		return reconcile.Result{}, err
	}
	if err := os.MkdirAll(m.dir, 0o755); err != nil {
		return reconcile.Result{}, fmt.Errorf("policy directory %s: %w", m.dir, err)
	}
	var errs []error
	want := map[string]bool{}
	for _, f := range files {
		want[f.name] = true
		if err := m.put(ctx, f); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, m.removeStale(want)...)
	for name := range m.refused {
		if !want[name] {
			delete(m.refused, name) // its namespace has no policies left
		}
	}
	return reconcile.Result{}, errors.Join(errs...)
}

// put replaces the file f names with f's content, unless policy.CheckFile finds a
// problem in it: then the file keeps its content, and the refusal is logged and recorded.
func (m *mirror) put(ctx context.Context, f mirrorFile) error {
	path := filepath.Join(m.dir, f.name)
	if problems := policy.CheckFile(path, f.data); len(problems) > 0 {
		sum := sha256.Sum256(f.data)
		if m.refused == nil {
			m.refused = map[string][sha256.Size]byte{}
		}
		if m.refused[f.name] != sum {
			m.refused[f.name] = sum
			m.refuse(ctx, f, path, problems)
		}
		return nil
	}
	delete(m.refused, f.name)
	changed, err := writeIfChanged(path, f.data)
	if err == nil && changed {
		m.log.WithField("file", path).Infof("policy directory updated: %s", describe(f))
	}
	return err
}

// refuse logs why the new content of f was not written and records a Warning Event on
// the policy at fault: the one a document error names, else (the file too large) the
// namespace's largest policy.
func (m *mirror) refuse(ctx context.Context, f mirrorFile, path string, problems []error) {
	kept := "the node has no earlier content of it"
	if _, err := os.Stat(path); err == nil {
		kept = "the node keeps its last good content"
	}
	cause := problems[0].Error()
	if len(problems) > 1 {
		cause += fmt.Sprintf(" (and %d more)", len(problems)-1)
	}
	m.log.WithField("file", path).Errorf("policy directory: the new %s is not written (%s): %s", describe(f), kept, cause)
	if len(f.policies) == 0 {
		return // storage configs are cluster-scoped: the log is their place
	}
	at := largest(f.policies)
	var de *v1.DocumentError
	if errors.As(problems[0], &de) && de.Name != "" {
		for i := range f.policies {
			if f.policies[i].Name == de.Name {
				at = &f.policies[i]
			}
		}
	}
	msg := fmt.Sprintf("the policies of namespace %s were not written to node %s's %s (%s): %s",
		at.Namespace, m.node, path, kept, cause)
	if err := m.event(ctx, at, v1.Truncate(msg, 1024)); err != nil {
		m.log.WithError(err).Warnf("policy directory: event on PodSnapshotPolicy %s/%s", at.Namespace, at.Name)
	}
}

// event records a Warning Event with ReasonPolicyNotMirrored on p.
func (m *mirror) event(ctx context.Context, p *v1.PodSnapshotPolicy, msg string) error {
	now := time.Now()
	ref := corev1.ObjectReference{APIVersion: v1.SchemeGroupVersion.String(), Kind: v1.KindPolicy,
		Namespace: p.Namespace, Name: p.Name, UID: p.UID}
	ev := nodeEvent(m.node, ref, fmt.Sprintf("%x", now.UnixNano()), ReasonPolicyNotMirrored, corev1.EventTypeWarning, msg, now)
	return m.c.Create(ctx, ev)
}

// removeStale removes the namespace files not in want and the legacy single file.
func (m *mirror) removeStale(want map[string]bool) []error {
	entries, err := os.ReadDir(m.dir)
	if err != nil {
		return []error{fmt.Errorf("policy directory %s: %w", m.dir, err)}
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		ns, ok := strings.CutPrefix(name, namespaceFilePrefix)
		ours := ok && strings.HasSuffix(ns, namespaceFileSuffix)
		if want[name] || !(ours || name == legacyMirrorFile) {
			continue
		}
		path := filepath.Join(m.dir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("policy directory: remove %s: %w", path, err))
			continue
		}
		m.log.WithField("file", path).Info("policy directory: removed (no policies left in its namespace)")
	}
	return errs
}

// describe names what f holds, for logs.
func describe(f mirrorFile) string {
	if f.name == StorageConfigFile {
		return "file of storage configs"
	}
	return fmt.Sprintf("file of namespace %s (policies: %d)", f.policies[0].Namespace, len(f.policies))
}

// largest is the policy of ps whose YAML is the longest.
func largest(ps []v1.PodSnapshotPolicy) *v1.PodSnapshotPolicy {
	at, size := &ps[0], -1
	for i := range ps {
		if b, err := yaml.Marshal(ps[i].Spec); err == nil && len(b) > size {
			at, size = &ps[i], len(b)
		}
	}
	return at
}

// mirrorFiles renders the storage configs into StorageConfigFile and each namespace's
// policies into NamespaceFile(namespace), in a stable order: configs first, then the
// namespaces by name.
func mirrorFiles(configs []v1.PodSnapshotStorageConfig, policies []v1.PodSnapshotPolicy) ([]mirrorFile, error) {
	data, err := mirrorYAML(configs, nil)
	if err != nil {
		return nil, err
	}
	files := []mirrorFile{{name: StorageConfigFile, data: data}}
	byNS := map[string][]v1.PodSnapshotPolicy{}
	for _, p := range policies {
		byNS[p.Namespace] = append(byNS[p.Namespace], p)
	}
	for _, ns := range slices.Sorted(maps.Keys(byNS)) {
		data, err := mirrorYAML(nil, byNS[ns])
		if err != nil {
			return nil, err
		}
		files = append(files, mirrorFile{name: NamespaceFile(ns), data: data, policies: byNS[ns]})
	}
	return files, nil
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
