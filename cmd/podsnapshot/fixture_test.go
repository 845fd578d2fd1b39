package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
	"github.com/podsnapshot/podsnapshot/checkpoint/repo"
	"github.com/podsnapshot/podsnapshot/storage"
)

// now is the fixed clock of every test.
var now = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

// fixture is a policy directory with a local store, a config naming it, and a repo on the
// store to commit fake snapshots with.
type fixture struct {
	t         *testing.T
	dir       string // temp root
	store     string // the local store's directory
	policyDir string
	config    string // the shim config file
	repo      *repo.Repo
}

const storageConfigYAML = `apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotStorageConfig
metadata: {name: local}
spec:
  snapshotStorageConfig:
    local: {path: %s}
`

// web: workload trigger, snapshots expire after a day unused.
const webPolicyYAML = `apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotPolicy
metadata: {name: web, namespace: default}
spec:
  storageConfigName: local
  selector: {matchLabels: {app: web}}
  triggerConfig: {type: workload}
  retentionConfig: {lastAccessTimeout: 1d}
`

// batch: manual trigger, at most one snapshot per group.
const batchPolicyYAML = `apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotPolicy
metadata: {name: batch, namespace: jobs}
spec:
  storageConfigName: local
  selector: {}
  triggerConfig: {type: manual, postCheckpoint: stop}
  snapshotGroupingRules: {groupRetentionPolicy: {maxSnapshotCountPerGroup: 1}}
`

func newFixture(t *testing.T) *fixture {
	t.Helper()
	root := t.TempDir()
	f := &fixture{t: t, dir: root, store: filepath.Join(root, "store"), policyDir: filepath.Join(root, "policies"),
		config: filepath.Join(root, "podsnapshot.toml")}
	for _, d := range []string{f.store, f.policyDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f.write("storage.yaml", fmt.Sprintf(storageConfigYAML, f.store))
	f.write("web.yaml", webPolicyYAML)
	f.write("batch.yml", batchPolicyYAML)
	cfg := fmt.Sprintf("policy_dir = %q\nwork_dir = %q\n", f.policyDir, filepath.Join(root, "work"))
	if err := os.WriteFile(f.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := storage.Open(context.Background(), "file://"+f.store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f.repo = &repo.Repo{Store: st}
	return f
}

// write writes a file of the policy directory.
func (f *fixture) write(name, content string) {
	f.t.Helper()
	if err := os.WriteFile(filepath.Join(f.policyDir, name), []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// commit stores a fake snapshot of namespace/policy created age before now, with image
// files of a few KiB each.
func (f *fixture) commit(namespace, policy string, age time.Duration, fill byte) *manifest.Manifest {
	f.t.Helper()
	img := f.t.TempDir()
	for i, file := range repo.ImageFiles {
		data := bytes.Repeat([]byte{fill + byte(i)}, 4096*(i+1))
		if err := os.WriteFile(filepath.Join(img, file.Local), data, 0o600); err != nil {
			f.t.Fatal(err)
		}
	}
	tuple := compat.New("release-20260101.0", map[string]string{"platform": "systrap"}, "amd64", []string{"sse2", "avx2"}, nil)
	m := manifest.New(namespace, policy, strings.Repeat(fmt.Sprintf("%x", fill%16), 64), tuple, now.Add(-age))
	m.Labels = map[string]string{"app": policy}
	m.Source = manifest.Source{Node: "node-1", SandboxID: "sandbox-" + policy}
	if err := f.repo.Commit(context.Background(), m, img); err != nil {
		f.t.Fatalf("Commit: %v", err)
	}
	return m
}

// snapshotDir is where m's objects are in the store.
func (f *fixture) snapshotDir(m *manifest.Manifest) string {
	return filepath.Join(f.store, filepath.FromSlash(m.Dir()))
}

// result is one in-process run of the CLI.
type result struct {
	code           int
	stdout, stderr string
}

// run runs the CLI with the fixture's config and the fixed clock.
func (f *fixture) run(args ...string) result {
	f.t.Helper()
	return runCLI(f.t, append([]string{"--config", f.config}, args...)...)
}

// runCLI runs the CLI's entry point with the fixed clock.
func runCLI(t *testing.T, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	c := newCLI(&out, &errOut)
	c.now = func() time.Time { return now }
	code := c.main(context.Background(), args)
	t.Logf("podsnapshot %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out.String(), errOut.String())
	return result{code, out.String(), errOut.String()}
}

// must fails the test unless r exited 0.
func (r result) must(t *testing.T) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit status %d; stderr:\n%s", r.code, r.stderr)
	}
	return r
}

// lines splits stdout into lines, each split into its whitespace-separated fields.
func (r result) lines() [][]string {
	var out [][]string
	for _, l := range strings.Split(strings.TrimRight(r.stdout, "\n"), "\n") {
		out = append(out, strings.Fields(l))
	}
	return out
}

// exists reports whether path exists.
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
