package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/manifest"
)

func TestLsTable(t *testing.T) {
	f := newFixture(t)
	old := f.commit("default", "web", 50*time.Hour, 1)
	fresh := f.commit("default", "web", 5*time.Minute, 2)
	job := f.commit("jobs", "batch", 3*time.Hour, 3)

	r := f.run("ls").must(t)
	want := [][]string{
		{"NAME", "STATUS", "POLICY", "AGE"},
		{old.UUID, "AllSnapshotsAvailable", "web", "2d2h"},
		{fresh.UUID, "AllSnapshotsAvailable", "web", "5m"},
	}
	if got := r.lines(); !reflect.DeepEqual(got, want) {
		t.Errorf("ls:\n got %q\nwant %q", got, want)
	}

	r = f.run("ls", "-n", "jobs").must(t)
	if got := r.lines(); len(got) != 2 || !reflect.DeepEqual(got[1], []string{job.UUID, "AllSnapshotsAvailable", "batch", "3h"}) {
		t.Errorf("ls -n jobs: %q", got)
	}

	r = f.run("ls", "-A").must(t)
	want = [][]string{
		{"NAMESPACE", "NAME", "STATUS", "POLICY", "AGE"},
		{"default", old.UUID, "AllSnapshotsAvailable", "web", "2d2h"},
		{"default", fresh.UUID, "AllSnapshotsAvailable", "web", "5m"},
		{"jobs", job.UUID, "AllSnapshotsAvailable", "batch", "3h"},
	}
	if got := r.lines(); !reflect.DeepEqual(got, want) {
		t.Errorf("ls -A:\n got %q\nwant %q", got, want)
	}

	r = f.run("ls", "-o", "wide").must(t)
	lines := r.lines()
	if !reflect.DeepEqual(lines[0], []string{"NAME", "STATUS", "POLICY", "AGE", "KEY", "SCOPE", "SIZE", "STORE"}) {
		t.Errorf("wide header %q", lines[0])
	}
	_, stored := old.Sizes()
	wantRow := []string{old.UUID, "AllSnapshotsAvailable", "web", "2d2h", old.Key[:16], "whole-pod", humanBytes(stored), "file://" + f.store}
	if len(lines) != 3 || !reflect.DeepEqual(lines[1], wantRow) {
		t.Errorf("wide rows %q\nwant first %q", lines, wantRow)
	}

	// An empty namespace prints no table, a kubectl-like note on stderr, and succeeds.
	r = f.run("ls", "-n", "nothing-here").must(t)
	if r.stdout != "" || !strings.Contains(r.stderr, "No snapshots found in nothing-here namespace") {
		t.Errorf("empty namespace: %+v", r)
	}
}

func TestLsJSON(t *testing.T) {
	f := newFixture(t)
	a := f.commit("default", "web", time.Hour, 1)
	b := f.commit("default", "web", time.Minute, 2)
	f.commit("jobs", "batch", time.Minute, 3)

	r := f.run("ls", "-o", "json").must(t)
	var list struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Items      []*v1.PodSnapshot `json:"items"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("-o json is not JSON: %v", err)
	}
	if list.APIVersion != "v1" || list.Kind != "List" || len(list.Items) != 2 {
		t.Fatalf("list: apiVersion %q kind %q, %d items", list.APIVersion, list.Kind, len(list.Items))
	}
	for i, want := range []*manifest.Manifest{a, b} {
		ps := list.Items[i]
		if ps.Kind != v1.KindSnapshot || ps.APIVersion != "podsnapshot.gke.io/v1" || ps.Name != want.UUID ||
			ps.Namespace != "default" || ps.Spec.PolicyName != "web" {
			t.Errorf("item %d: %s %s %s/%s policy %s", i, ps.APIVersion, ps.Kind, ps.Namespace, ps.Name, ps.Spec.PolicyName)
		}
		var ready bool
		for _, c := range ps.Status.Conditions {
			if c.Type == v1.ConditionReady && c.Status == "True" && c.Reason == v1.ReasonAllSnapshotsAvailable {
				ready = true
			}
		}
		if !ready {
			t.Errorf("item %d: no Ready=True/AllSnapshotsAvailable condition: %+v", i, ps.Status.Conditions)
		}
		if wantPath := "file://" + f.store + "/" + want.Dir(); ps.Status.StoragePath != wantPath {
			t.Errorf("item %d: storagePath %q, want %q", i, ps.Status.StoragePath, wantPath)
		}
	}

	// -A -o yaml holds all three; an empty namespace is an empty List, not null.
	r = f.run("ls", "-A", "-o", "yaml").must(t)
	if err := yaml.Unmarshal([]byte(r.stdout), &list); err != nil || len(list.Items) != 3 {
		t.Errorf("-A -o yaml: %v, %d items", err, len(list.Items))
	}
	r = f.run("ls", "-n", "none", "-o", "json").must(t)
	if !strings.Contains(r.stdout, `"items": []`) {
		t.Errorf("empty list: %s", r.stdout)
	}
}

func TestInspect(t *testing.T) {
	f := newFixture(t)
	m := f.commit("jobs", "batch", time.Hour, 5)

	for _, name := range []string{m.UUID, "jobs/" + m.UUID} {
		r := f.run("inspect", name).must(t)
		docs := strings.SplitN(r.stdout, "\n---\n", 2)
		if len(docs) != 2 {
			t.Fatalf("want two YAML documents, got:\n%s", r.stdout)
		}
		var ps v1.PodSnapshot
		if err := yaml.Unmarshal([]byte(docs[0]), &ps); err != nil || ps.Name != m.UUID || ps.Spec.PolicyName != "batch" {
			t.Errorf("PodSnapshot document: %v %+v", err, ps)
		}
		var got manifest.Manifest
		if err := yaml.Unmarshal([]byte(docs[1]), &got); err != nil {
			t.Fatalf("manifest document: %v", err)
		}
		if got.UUID != m.UUID || got.Key != m.Key || got.Compat.RunscVersion != "release-20260101.0" ||
			len(got.Files) != 3 || got.Files[0].XXH64 != m.Files[0].XXH64 || got.Files[0].Codec != "zstd" {
			t.Errorf("manifest document differs: %+v", got)
		}
		raw, stored := m.Sizes()
		for _, want := range []string{"# manifest file://" + f.store + "/" + m.ObjectName(),
			"# 3 files: " + humanBytes(raw) + " raw, " + humanBytes(stored) + " stored", "reason: AllSnapshotsAvailable", "crc32c:"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("inspect output lacks %q", want)
			}
		}
	}

	r := f.run("inspect", "0b6c5c8e-4f0e-4a5d-9d4e-2c1f7a9b3e10")
	if r.code != 1 || r.stdout != "" ||
		!strings.Contains(r.stderr, `podsnapshot inspect: PodSnapshot "0b6c5c8e-4f0e-4a5d-9d4e-2c1f7a9b3e10" not found`) {
		t.Errorf("unknown name: %+v", r)
	}
	if r := f.run("inspect", "-n", "default", m.UUID); r.code != 1 || !strings.Contains(r.stderr, `not found in namespace "default"`) {
		t.Errorf("wrong namespace: %+v", r)
	}
}

func TestRm(t *testing.T) {
	f := newFixture(t)
	gone := f.commit("default", "web", time.Hour, 1)
	kept := f.commit("default", "web", time.Minute, 2)
	if !exists(filepath.Join(f.snapshotDir(gone), manifest.ManifestFile)) {
		t.Fatal("fixture: manifest not where expected")
	}

	r := f.run("rm", gone.UUID, "no-such-snapshot")
	if r.code != 1 {
		t.Errorf("exit %d, want 1 for an unknown name", r.code)
	}
	if !strings.Contains(r.stdout, `podsnapshot "default/`+gone.UUID+`" deleted`) {
		t.Errorf("stdout does not report the deletion: %q", r.stdout)
	}
	if !strings.Contains(r.stderr, `podsnapshot rm: PodSnapshot "no-such-snapshot" not found`) {
		t.Errorf("stderr does not name the unknown snapshot: %q", r.stderr)
	}
	if exists(f.snapshotDir(gone)) {
		entries, _ := os.ReadDir(f.snapshotDir(gone))
		if len(entries) > 0 {
			t.Errorf("objects left in %s: %v", f.snapshotDir(gone), entries)
		}
	}
	// The index marker went too.
	markers, _ := filepath.Glob(filepath.Join(f.store, "default", "web", "keys", "*", "*-"+gone.UUID))
	if len(markers) > 0 {
		t.Errorf("index marker left: %v", markers)
	}
	if !exists(filepath.Join(f.snapshotDir(kept), manifest.ManifestFile)) {
		t.Error("the other snapshot was deleted too")
	}
	if r := f.run("ls").must(t); strings.Contains(r.stdout, gone.UUID) || !strings.Contains(r.stdout, kept.UUID) {
		t.Errorf("ls after rm:\n%s", r.stdout)
	}
	if r := f.run("rm", "default/"+kept.UUID).must(t); !strings.Contains(r.stdout, kept.UUID) {
		t.Errorf("rm NAMESPACE/NAME: %q", r.stdout)
	}
}

func TestGC(t *testing.T) {
	f := newFixture(t)
	expired := f.commit("default", "web", 3*24*time.Hour, 1) // lastAccessTimeout 1d
	fresh := f.commit("default", "web", 2*time.Hour, 2)
	// Used a day after creation, two days ago: expired too, by its lastAccessTime.
	touched := f.commit("default", "web", 3*24*time.Hour, 3)
	touched.LastAccessTime = now.Add(-30 * time.Hour)
	if err := f.rewrite(touched); err != nil {
		t.Fatal(err)
	}
	// Recently used: kept although created long ago.
	used := f.commit("default", "web", 5*24*time.Hour, 4)
	used.LastAccessTime = now.Add(-time.Hour)
	if err := f.rewrite(used); err != nil {
		t.Fatal(err)
	}
	// maxSnapshotCountPerGroup 1: the older job snapshot goes.
	jobOld := f.commit("jobs", "batch", 2*time.Hour, 5)
	jobNew := f.commit("jobs", "batch", time.Hour, 6)
	// A snapshot of a policy that no longer exists is left alone.
	orphan := f.commit("default", "removed", 30*24*time.Hour, 7)

	r := f.run("gc", "--dry-run").must(t)
	if !strings.Contains(r.stdout, "would delete default/"+expired.UUID+": policy default/web: not used since") {
		t.Errorf("dry run does not plan the expired snapshot:\n%s", r.stdout)
	}
	if !exists(filepath.Join(f.snapshotDir(expired), manifest.ManifestFile)) {
		t.Fatal("--dry-run deleted")
	}

	r = f.run("gc").must(t)
	for _, m := range []*manifest.Manifest{expired, touched, jobOld} {
		if exists(filepath.Join(f.snapshotDir(m), manifest.ManifestFile)) {
			t.Errorf("%s/%s (%s) not deleted", m.Namespace, m.UUID, m.Policy)
		}
		if !strings.Contains(r.stdout, "deleted "+m.Namespace+"/"+m.UUID+": policy ") {
			t.Errorf("deletion of %s not reported", m.UUID)
		}
	}
	for _, m := range []*manifest.Manifest{fresh, used, jobNew, orphan} {
		if !exists(filepath.Join(f.snapshotDir(m), manifest.ManifestFile)) {
			t.Errorf("%s/%s (%s) deleted", m.Namespace, m.UUID, m.Policy)
		}
	}
	if !strings.Contains(r.stdout, "lastAccessTimeout 1d") || !strings.Contains(r.stdout, "maxSnapshotCountPerGroup 1") {
		t.Errorf("reasons missing:\n%s", r.stdout)
	}
	if !strings.Contains(r.stdout, "gc: 3 deleted, 4 kept") {
		t.Errorf("summary:\n%s", r.stdout)
	}
	if r := f.run("gc").must(t); !strings.Contains(r.stdout, "gc: 0 deleted, 4 kept") {
		t.Errorf("second gc:\n%s", r.stdout)
	}
}

func TestGCFailed(t *testing.T) {
	f := newFixture(t)
	old := f.commit("default", "web", 3*time.Hour, 1)
	recent := f.commit("default", "web", 3*time.Hour, 2)
	for _, m := range []*manifest.Manifest{old, recent} {
		if err := f.repo.MarkFailed(t.Context(), m, "checksum mismatch in pages.img.zst"); err != nil {
			t.Fatal(err)
		}
	}
	// The store's modification time says when each was marked Failed.
	for m, at := range map[*manifest.Manifest]time.Time{old: now.Add(-2 * time.Hour), recent: now.Add(-10 * time.Minute)} {
		if err := os.Chtimes(filepath.Join(f.snapshotDir(m), manifest.ManifestFile), at, at); err != nil {
			t.Fatal(err)
		}
	}
	if r := f.run("ls").must(t); strings.Count(r.stdout, "Failed") != 2 {
		t.Errorf("ls does not show Failed:\n%s", r.stdout)
	}
	r := f.run("gc").must(t)
	if exists(filepath.Join(f.snapshotDir(old), manifest.ManifestFile)) ||
		!exists(filepath.Join(f.snapshotDir(recent), manifest.ManifestFile)) {
		t.Errorf("want only the snapshot failed 2h ago deleted")
	}
	if !strings.Contains(r.stdout, "longer than --failed-ttl 1h0m0s: checksum mismatch") {
		t.Errorf("reason:\n%s", r.stdout)
	}
	if r := f.run("gc", "--failed-ttl", "0").must(t); !strings.Contains(r.stdout, "gc: 0 deleted") {
		t.Errorf("--failed-ttl 0 deleted:\n%s", r.stdout)
	}
	f.run("gc", "--failed-ttl", "5m").must(t)
	if exists(filepath.Join(f.snapshotDir(recent), manifest.ManifestFile)) {
		t.Error("--failed-ttl 5m kept a snapshot failed 10m ago")
	}
}

// rewrite stores m's manifest again (as Touch does, with a chosen time).
func (f *fixture) rewrite(m *manifest.Manifest) error {
	data, err := manifest.Encode(m)
	if err != nil {
		return err
	}
	_, err = f.repo.Store.Put(f.t.Context(), m.ObjectName(), bytes.NewReader(data))
	return err
}

func TestPolicies(t *testing.T) {
	f := newFixture(t)
	f.write("broken.yaml", strings.Replace(webPolicyYAML, "type: workload", "type: sometimes", 1))
	r := f.run("policies").must(t)
	lines := r.lines()
	if !reflect.DeepEqual(lines[0], []string{"NAMESPACE", "NAME", "TRIGGER", "POST-CHECKPOINT", "STORAGE", "RETENTION", "FILE"}) {
		t.Errorf("header %q", lines[0])
	}
	wantRows := [][]string{
		{"default", "web", "workload", "resume", "file://" + f.store, "lastAccess", "1d", filepath.Join(f.policyDir, "web.yaml") + ":1"},
		{"jobs", "batch", "manual", "stop", "file://" + f.store, "1/group", filepath.Join(f.policyDir, "batch.yml") + ":1"},
	}
	if !reflect.DeepEqual(lines[1:3], wantRows) {
		t.Errorf("rows:\n got %q\nwant %q", lines[1:3], wantRows)
	}
	errs := r.stdout[strings.Index(r.stdout, "ERRORS"):]
	if !strings.HasPrefix(errs, "ERRORS (1)\n") ||
		!strings.Contains(errs, filepath.Join(f.policyDir, "broken.yaml")+`: document 1: PodSnapshotPolicy "default/web": spec.triggerConfig.type: Unsupported value: "sometimes"`) {
		t.Errorf("errors section:\n%s", errs)
	}
	if !strings.Contains(r.stdout, "STORAGE CONFIG") {
		t.Errorf("storage configs missing")
	}

	// The snapshot commands warn about skipped documents on stderr.
	if r := f.run("ls"); !strings.Contains(r.stderr, "1 document(s) skipped") {
		t.Errorf("ls does not warn: %q", r.stderr)
	}

	// A policy "directory" that cannot be read is the one failure.
	file := filepath.Join(f.dir, "not-a-dir")
	os.WriteFile(file, nil, 0o644)
	if r := runCLI(t, "--policy-dir", file, "policies"); r.code != 1 || !strings.Contains(r.stderr, "podsnapshot policies: policy directory") {
		t.Errorf("unreadable directory: %+v", r)
	}
	// A missing one is no policies.
	if r := runCLI(t, "--policy-dir", filepath.Join(f.dir, "missing"), "policies").must(t); !strings.Contains(r.stdout, "No policies in") {
		t.Errorf("missing directory: %+v", r)
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		out  string // in stdout (code 0) or stderr
	}{
		{nil, 2, "Usage: podsnapshot"},
		{[]string{"-h"}, 0, "Commands:"},
		{[]string{"help"}, 0, "checkpoint"},
		{[]string{"help", "gc"}, 0, "--failed-ttl DURATION"},
		{[]string{"ls", "-h"}, 0, "-o, --output FORMAT"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"--bogus", "ls"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"ls", "--bogus"}, 2, "podsnapshot ls: flag provided but not defined: -bogus"},
		{[]string{"ls", "-o", "xml"}, 2, `-o "xml": want wide, json or yaml`},
		{[]string{"ls", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"inspect"}, 2, "want exactly one snapshot NAME"},
		{[]string{"rm"}, 2, "want at least one snapshot NAME"},
		{[]string{"checkpoint"}, 2, "want exactly one CONTAINER"},
		{[]string{"gc", "--failed-ttl", "-1h"}, 2, "must not be negative"},
		{[]string{"version"}, 0, "Version:"},
		{[]string{"--config", "/nonexistent/podsnapshot.toml", "ls"}, 1, "podsnapshot ls: shim config /nonexistent/podsnapshot.toml"},
		{[]string{"--policy-dir", "/nonexistent", "ls"}, 1, "no PodSnapshotStorageConfig in policy directory /nonexistent"},
	} {
		r := runCLI(t, tc.args...)
		text := r.stderr
		if tc.code == 0 {
			text = r.stdout
		}
		if r.code != tc.code || !strings.Contains(text, tc.out) {
			t.Errorf("%q: exit %d, want %d with %q; stdout %q stderr %q", tc.args, r.code, tc.code, tc.out, r.stdout, r.stderr)
		}
	}
}

// TestRunEntry checks the plain entry point: real clock, no-policy config.
func TestRunEntry(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"version"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "podsnapshot") {
		t.Errorf("run version: %d %q %q", code, out.String(), errOut.String())
	}
}
