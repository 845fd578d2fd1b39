package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/policy"
	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/internal/config"
	"github.com/podsnapshot/podsnapshot/storage"
	_ "github.com/podsnapshot/podsnapshot/storage/gcs"   // gs:// stores
	_ "github.com/podsnapshot/podsnapshot/storage/local" // file:// stores
)

// env is what the snapshot commands work on: the config, the policy directory's content
// and the stores its storage configs name.
type env struct {
	cfg    config.Config
	set    *policy.Set
	stores []*store
	// openErr holds the stores that could not be opened; snapshots reports it.
	openErr error
}

// store is one snapshot store, opened once however many storage configs name it.
type store struct {
	url  string
	repo *repo.Repo
}

// snapshot is a manifest and the store it was read from.
type snapshot struct {
	*manifest.Manifest
	store *store
}

// ID is "namespace/uuid".
func (s snapshot) ID() string { return s.Namespace + "/" + s.UUID }

// loadConfig reads the shim config (a missing default file means defaults) and applies
// --policy-dir.
func (c *cli) loadConfig() (config.Config, error) {
	path := ""
	if c.configSet {
		path = c.configPath
	}
	cfg, err := config.Load(path)
	if err != nil {
		return cfg, err
	}
	if c.policyDir != "" {
		cfg.PolicyDir = c.policyDir
	}
	return cfg, nil
}

// loadPolicies reads the config and the policy directory. It fails when the config is bad
// or the directory exists but cannot be read; a missing directory is an empty Set.
func (c *cli) loadPolicies() (*env, error) {
	cfg, err := c.loadConfig()
	if err != nil {
		return nil, err
	}
	if _, err := os.ReadDir(cfg.PolicyDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("policy directory: %w", err)
	}
	return &env{cfg: cfg, set: policy.Load(cfg.PolicyDir)}, nil
}

// openEnv is loadPolicies followed by opening every store named by a storage config of
// the policy directory. Skipped policy documents are one warning on stderr. It fails when
// no storage config is defined; a store that cannot be opened is left out and its error
// kept for snapshots to report. Close the env when done.
func (c *cli) openEnv(ctx context.Context) (*env, error) {
	e, err := c.loadPolicies()
	if err != nil {
		return nil, err
	}
	if n := len(e.set.Errors); n > 0 {
		fmt.Fprintf(c.stderr, "warning: policy directory %s: %d document(s) skipped; run 'podsnapshot policies' to see why\n", e.set.Dir, n)
	}
	urls := map[string]bool{}
	for _, sc := range e.set.StorageConfigs {
		urls[strings.TrimSuffix(sc.StoreURL(), "/")] = true
	}
	if len(urls) == 0 {
		where := "built-in defaults"
		if e.cfg.Path != "" {
			where = e.cfg.Path
		}
		return nil, fmt.Errorf("no PodSnapshotStorageConfig in policy directory %s (policy_dir of %s): no store to look in", e.set.Dir, where)
	}
	sorted := make([]string, 0, len(urls))
	for u := range urls {
		sorted = append(sorted, u)
	}
	sort.Strings(sorted)
	for _, u := range sorted {
		st, err := storage.Open(ctx, u, storage.WithLogger(c.log))
		if err != nil {
			e.openErr = errors.Join(e.openErr, err)
			continue
		}
		e.stores = append(e.stores, &store{url: u, repo: &repo.Repo{Store: st, Now: c.now}})
	}
	return e, nil
}

// close closes the stores.
func (e *env) close() {
	for _, s := range e.stores {
		s.repo.Store.Close()
	}
}

// storeFor returns the opened store of url, or nil.
func (e *env) storeFor(url string) *store {
	url = strings.TrimSuffix(url, "/")
	for _, s := range e.stores {
		if s.url == url {
			return s
		}
	}
	return nil
}

// snapshots lists the snapshots of namespace ("" for all) in every store, ordered by
// namespace, creation time and UUID. A manifest that cannot be read is a warning on
// stderr. A store that cannot be listed is in the returned error; the other stores are
// listed all the same.
func (c *cli) snapshots(ctx context.Context, e *env, namespace string) ([]snapshot, error) {
	var out []snapshot
	errs := []error{e.openErr}
	for _, st := range e.stores {
		ms, bad, err := st.repo.List(ctx, namespace)
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s: %w", st.url, err))
			continue
		}
		for _, err := range bad {
			fmt.Fprintf(c.stderr, "warning: skipped unreadable manifest: %v\n", err)
		}
		for _, m := range ms {
			out = append(out, snapshot{Manifest: m, store: st})
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if !a.CreatedAt.Equal(b.CreatedAt) {
			return a.CreatedAt.Before(b.CreatedAt)
		}
		return a.UUID < b.UUID
	})
	return out, errors.Join(errs...)
}

// matching returns the snapshots that name denotes: "UUID" or "NAMESPACE/UUID".
func matching(snaps []snapshot, name string) []snapshot {
	var out []snapshot
	for _, s := range snaps {
		if s.UUID == name || s.ID() == name {
			out = append(out, s)
		}
	}
	return out
}

// notFound is the error for a name that matches no snapshot.
func notFound(name, namespace string) error {
	if namespace != "" {
		return fmt.Errorf("PodSnapshot %q not found in namespace %q", name, namespace)
	}
	return fmt.Errorf("PodSnapshot %q not found in any namespace", name)
}

// humanBytes formats n in IEC units with one decimal: "512B", "97.7KiB", "1.2GiB".
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
