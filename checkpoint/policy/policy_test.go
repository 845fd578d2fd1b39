package policy

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
)

const samples = "../../testdata/policies"

// copySamples copies every sample file of the given subdirectories into one directory,
// named "<subdir>-<file>", and returns it.
func copySamples(t *testing.T, subdirs ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, sub := range subdirs {
		files, err := filepath.Glob(filepath.Join(samples, sub, "*.yaml"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no samples in %s: %v", sub, err)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(dir, sub+"-"+filepath.Base(f)), string(b))
		}
	}
	return dir
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// wantLine returns the text after "# want: " on the first line of path.
func wantLine(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	want, ok := strings.CutPrefix(sc.Text(), "# want: ")
	if !ok {
		t.Fatalf("%s: first line is not \"# want: ...\"", path)
	}
	return want
}

func policyIDs(s *Set) []string {
	var ids []string
	for _, e := range s.Policies {
		ids = append(ids, e.ID())
	}
	return ids
}

// TestSamples loads the valid and invalid samples together: each invalid file yields
// exactly the one error its "# want" line names, and every valid policy still loads.
func TestSamples(t *testing.T) {
	dir := copySamples(t, "gke", "local", "invalid")
	set := Load(dir)

	wantIDs := []string{"default/example-pod-snapshot-policy", "default/my-app", "ml/inference"}
	if got := policyIDs(set); !reflect.DeepEqual(got, wantIDs) {
		t.Errorf("policies = %v; want %v", got, wantIDs)
	}
	stores := map[string]string{}
	for _, e := range set.Policies {
		stores[e.ID()] = e.StoreURL
	}
	if stores["default/example-pod-snapshot-policy"] != "gs://my-bucket/my-folder" || stores["ml/inference"] != "file:///var/lib/podsnapshot/store" {
		t.Errorf("store URLs = %v", stores)
	}

	byFile := map[string][]error{}
	for _, err := range set.Errors {
		var de *v1.DocumentError
		if !errors.As(err, &de) {
			t.Fatalf("error %v is not a *v1.DocumentError", err)
		}
		byFile[filepath.Base(de.File)] = append(byFile[filepath.Base(de.File)], err)
	}
	invalid, _ := filepath.Glob(filepath.Join(samples, "invalid", "*.yaml"))
	for _, f := range invalid {
		name := "invalid-" + filepath.Base(f)
		errs := byFile[name]
		delete(byFile, name)
		if len(errs) != 1 {
			t.Errorf("%s: %d errors, want 1: %v", name, len(errs), errs)
			continue
		}
		want := wantLine(t, f)
		got := errs[0].Error()
		prefix := filepath.Join(dir, name) + ": document 1: PodSnapshotPolicy \"default/"
		if !strings.HasPrefix(got, prefix) || !strings.HasSuffix(got, `": `+want) {
			t.Errorf("%s:\n  got  %s\n  want %s<name>\": %s", name, got, prefix, want)
		}
	}
	if len(byFile) != 0 {
		t.Errorf("errors in valid files: %v", byFile)
	}
}

// TestValidSamplesAlone: the gke and local directories load without errors.
func TestValidSamplesAlone(t *testing.T) {
	for _, sub := range []string{"gke", "local"} {
		set := Load(filepath.Join(samples, sub))
		if len(set.Errors) != 0 || len(set.Policies) == 0 {
			t.Errorf("%s: %d policies, errors %v", sub, len(set.Policies), set.Errors)
		}
	}
	set := Load(filepath.Join(samples, "gke"))
	p := set.Policies[0].Policy
	if p.Spec.TriggerConfig.Type != v1.TriggerWorkload || p.Spec.TriggerConfig.PostCheckpoint != v1.PostCheckpointResume {
		t.Errorf("GKE example policy: %+v", p.Spec.TriggerConfig)
	}
	if m := set.Match("default", map[string]string{"app": "my-app", "pod-template-hash": "x"}); !m.Found() || m.Policy.Name != "example-pod-snapshot-policy" {
		t.Errorf("app: my-app does not match the GKE example: %+v", m)
	}
}

const storeDoc = `apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotStorageConfig
metadata: {name: store}
spec: {snapshotStorageConfig: {local: {path: /store}}}
`

// policyDoc is a policy document in namespace ns with the given selector (YAML flow).
func policyDoc(ns, name, selector, extraMeta string) string {
	return "---\napiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshotPolicy\nmetadata: {name: " + name + ", namespace: " + ns + extraMeta + "}\n" +
		"spec:\n  storageConfigName: store\n  selector: " + selector + "\n  triggerConfig: {type: workload}\n"
}

func TestSelectors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "p.yaml"), storeDoc+
		policyDoc("labels", "p", "{matchLabels: {app: web, tier: fe}}", "")+
		policyDoc("in", "p", "{matchExpressions: [{key: tier, operator: In, values: [fe, be]}]}", "")+
		policyDoc("notin", "p", "{matchExpressions: [{key: tier, operator: NotIn, values: [db]}]}", "")+
		policyDoc("exists", "p", "{matchExpressions: [{key: gpu, operator: Exists}]}", "")+
		policyDoc("doesnotexist", "p", "{matchExpressions: [{key: canary, operator: DoesNotExist}]}", "")+
		policyDoc("both", "p", "{matchLabels: {app: web}, matchExpressions: [{key: canary, operator: DoesNotExist}]}", "")+
		policyDoc("all", "p", "{}", ""))
	set := Load(dir)
	if len(set.Errors) != 0 {
		t.Fatal(set.Errors)
	}
	type L = map[string]string
	for _, tc := range []struct {
		ns     string
		labels L
		want   bool
	}{
		{"labels", L{"app": "web", "tier": "fe"}, true},
		{"labels", L{"app": "web", "tier": "fe", "extra": "x"}, true},
		{"labels", L{"app": "web"}, false},
		{"labels", L{"app": "db", "tier": "fe"}, false},
		{"labels", nil, false},
		{"in", L{"tier": "fe"}, true},
		{"in", L{"tier": "be"}, true},
		{"in", L{"tier": "db"}, false},
		{"in", L{}, false},
		{"notin", L{"tier": "fe"}, true},
		{"notin", L{"tier": "db"}, false},
		{"notin", L{}, true}, // NotIn matches pods without the label, as in Kubernetes
		{"exists", L{"gpu": ""}, true},
		{"exists", L{"gpu": "h200"}, true},
		{"exists", L{"app": "web"}, false},
		{"doesnotexist", L{}, true},
		{"doesnotexist", L{"canary": "true"}, false},
		{"both", L{"app": "web"}, true},
		{"both", L{"app": "web", "canary": "1"}, false},
		{"all", nil, true},
		{"all", L{"anything": "x"}, true},
		// A policy of another namespace never matches, whatever its selector.
		{"elsewhere", L{"app": "web", "tier": "fe", "gpu": "x"}, false},
		{"", L{"app": "web", "tier": "fe"}, false},
	} {
		m := set.Match(tc.ns, tc.labels)
		if m.Found() != tc.want {
			t.Errorf("Match(%q, %v) found=%v; want %v", tc.ns, tc.labels, m.Found(), tc.want)
		}
		if m.Found() && m.Policy.Namespace != tc.ns {
			t.Errorf("Match(%q) returned a policy of namespace %q", tc.ns, m.Policy.Namespace)
		}
	}
}

func TestSeveralMatches(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "p.yaml"), storeDoc+
		policyDoc("ns", "zeta", "{}", ", creationTimestamp: '2025-01-01T00:00:00Z'")+
		policyDoc("ns", "beta", "{matchLabels: {app: web}}", ", creationTimestamp: '2025-06-01T00:00:00Z'")+
		policyDoc("ns", "alpha", "{matchLabels: {app: web}}", ", creationTimestamp: '2025-06-01T00:00:00Z'")+
		policyDoc("other", "first", "{}", ", creationTimestamp: '2020-01-01T00:00:00Z'"))
	logger, hook := logtest.NewNullLogger()
	l := NewLoader(Options{Dir: dir, Logger: logger})
	m := l.Match("ns", map[string]string{"app": "web"})
	if !m.Found() || m.Policy.Name != "zeta" {
		t.Fatalf("chose %v; want the oldest, zeta", m.Entry)
	}
	var others []string
	for _, o := range m.Others {
		others = append(others, o.Policy.Name)
	}
	if !reflect.DeepEqual(others, []string{"alpha", "beta"}) { // same age: by name
		t.Errorf("others = %v", others)
	}
	want := "pod matches 3 PodSnapshotPolicies in namespace ns (zeta, alpha, beta); using zeta: the oldest creationTimestamp, then name"
	if m.Warning() != want {
		t.Errorf("warning = %q", m.Warning())
	}
	if e := hook.LastEntry(); e == nil || e.Level != logrus.WarnLevel || e.Message != want {
		t.Errorf("logged %+v", e)
	}
	// Repeating the match gives the same answer.
	for range 5 {
		if l.Match("ns", map[string]string{"app": "web"}).Policy.Name != "zeta" {
			t.Fatal("not deterministic")
		}
	}
	if m := l.Match("ns", map[string]string{"app": "db"}); m.Policy.Name != "zeta" || m.Warning() != "" {
		t.Errorf("single match: %+v %q", m.Entry, m.Warning())
	}
}

// clock is a settable fake time.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func touch(t *testing.T, p string, i int) { // distinct mtimes, whatever the file system's resolution
	t.Helper()
	mt := time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC)
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
}

func TestReload(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	logger, _ := logtest.NewNullLogger()
	l := NewLoader(Options{Dir: dir, CheckInterval: time.Second, Now: clk.now, Logger: logger})
	web := map[string]string{"app": "web"}

	// An empty directory: nothing matches, no errors.
	if m := l.Match("ns", web); m.Found() || len(l.Errors()) != 0 {
		t.Fatalf("empty dir: %+v %v", m, l.Errors())
	}

	// A new file is picked up once the check interval has passed.
	a := filepath.Join(dir, "a.yaml")
	writeFile(t, a, storeDoc+policyDoc("ns", "web", "{matchLabels: {app: web}}", ""))
	touch(t, a, 1)
	clk.advance(500 * time.Millisecond)
	if l.Match("ns", web).Found() {
		t.Fatal("re-read before the check interval")
	}
	clk.advance(600 * time.Millisecond)
	if m := l.Match("ns", web); !m.Found() || m.Policy.Name != "web" {
		t.Fatalf("new file not picked up: %+v", m)
	}

	// A changed file: the policy now selects app=api.
	writeFile(t, a, storeDoc+policyDoc("ns", "web", "{matchLabels: {app: api}}", ""))
	touch(t, a, 2)
	clk.advance(2 * time.Second)
	if l.Match("ns", web).Found() || !l.Match("ns", map[string]string{"app": "api"}).Found() {
		t.Fatal("changed file not picked up")
	}

	// A broken second file is reported; the first keeps working.
	b := filepath.Join(dir, "b.yml")
	writeFile(t, b, policyDoc("ns", "bad", "{}", "")+"  snapshotScope: everything\n")
	touch(t, b, 3)
	clk.advance(2 * time.Second)
	errs := l.Errors()
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), `b.yml: document 1: PodSnapshotPolicy "ns/bad": spec.snapshotScope: Unsupported value: "everything"`) {
		t.Fatalf("errors = %v", errs)
	}
	if !l.Match("ns", map[string]string{"app": "api"}).Found() {
		t.Fatal("a bad file stopped a good one")
	}

	// Removing files is picked up too; other extensions and hidden files are ignored.
	writeFile(t, filepath.Join(dir, "notes.txt"), "not yaml")
	writeFile(t, filepath.Join(dir, ".hidden.yaml"), "garbage: [")
	if err := os.Remove(b); err != nil {
		t.Fatal(err)
	}
	clk.advance(2 * time.Second)
	if errs := l.Errors(); len(errs) != 0 {
		t.Fatalf("errors after removal: %v", errs)
	}
	if err := os.Remove(a); err != nil {
		t.Fatal(err)
	}
	clk.advance(2 * time.Second)
	if l.Match("ns", map[string]string{"app": "api"}).Found() {
		t.Fatal("removed policy still matches")
	}
}

func TestLoadEdgeCases(t *testing.T) {
	if s := Load(filepath.Join(t.TempDir(), "absent")); len(s.Errors) != 0 || len(s.Policies) != 0 {
		t.Errorf("missing dir: %+v", s)
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), storeDoc+policyDoc("ns", "p", "{}", ""))
	writeFile(t, filepath.Join(dir, "b.yaml"), storeDoc+policyDoc("ns", "p", "{}", "")+
		"---\napiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshotManualTrigger\nmetadata: {name: t, namespace: ns}\nspec: {targetPod: x}\n")
	if err := os.Symlink(filepath.Join(dir, "gone"), filepath.Join(dir, "c.yaml")); err != nil {
		t.Fatal(err)
	}
	s := Load(dir)
	var msgs []string
	for _, e := range s.Errors {
		msgs = append(msgs, strings.TrimPrefix(e.Error(), dir+"/"))
	}
	sort.Strings(msgs)
	want := []string{
		`b.yaml: document 1: PodSnapshotStorageConfig "store": metadata.name: Duplicate value: "store": already defined in ` + dir + `/a.yaml document 1`,
		`b.yaml: document 2: PodSnapshotPolicy "ns/p": metadata.name: Duplicate value: "p": already defined in ` + dir + `/a.yaml document 2`,
		`b.yaml: document 3: PodSnapshotManualTrigger "ns/t": kind: Unsupported value: "PodSnapshotManualTrigger": supported values: "PodSnapshotPolicy", "PodSnapshotStorageConfig"`,
		`c.yaml: stat ` + dir + `/c.yaml: no such file or directory`,
	}
	if !reflect.DeepEqual(msgs, want) {
		t.Errorf("errors:\n  %s\nwant\n  %s", strings.Join(msgs, "\n  "), strings.Join(want, "\n  "))
	}
	if len(s.Policies) != 1 {
		t.Errorf("policies = %v", policyIDs(s))
	}
}

// TestConcurrentLookups: lookups and reloads from many goroutines (run with -race).
func TestConcurrentLookups(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), storeDoc+policyDoc("ns", "p", "{}", ""))
	logger, _ := logtest.NewNullLogger()
	l := NewLoader(Options{Dir: dir, CheckInterval: -1, Logger: logger})
	done := make(chan bool)
	for i := range 8 {
		go func() {
			for range 50 {
				if i == 0 {
					l.Reload()
				}
				if !l.Match("ns", nil).Found() {
					t.Error("no match")
				}
			}
			done <- true
		}()
	}
	for range 8 {
		<-done
	}
}

// Issue 14 item 8: a 400 MB policy file took 118 s and 3 GiB at every reload. A file over
// MaxFileSize is skipped unread, with an error naming it and its size; the others load.
func TestOversizedFileSkipped(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), storeDoc+policyDoc("ns", "p", "{}", ""))
	huge := filepath.Join(dir, "huge.yaml")
	writeFile(t, huge, policyDoc("ns", "q", "{}", ""))
	if err := os.Truncate(huge, 400<<20); err != nil { // sparse: no disk, but 400 MB to read
		t.Fatal(err)
	}
	// Exactly MaxFileSize bytes is still read.
	edge := strings.Replace(storeDoc, "name: store", "name: store2", 1) + policyDoc("edge", "p", "{}", "") + "#"
	edge += strings.Repeat("x", MaxFileSize-len(edge)-1) + "\n"
	writeFile(t, filepath.Join(dir, "edge.yaml"), edge)

	t0 := time.Now()
	set := Load(dir)
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("Load took %v", d)
	}
	if len(set.Errors) != 1 || !strings.Contains(set.Errors[0].Error(), huge+": 419430400 bytes, over the 1048576-byte limit") {
		t.Fatalf("errors = %v", set.Errors)
	}
	if got := policyIDs(set); !reflect.DeepEqual(got, []string{"edge/p", "ns/p"}) {
		t.Fatalf("policies = %v", got)
	}
}

// Issue 14 item 8: the error of a bad document echoed the whole value. Values are quoted
// up to v1.MaxQuotedValue bytes.
func TestErrorsQuoteShortValues(t *testing.T) {
	big := strings.Repeat("x", 200_000) // four of them fit a policy file
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "p.yaml"), storeDoc+
		strings.Replace(policyDoc("ns", "p", "{}", ""), "type: workload", "type: "+big, 1)+
		policyDoc("ns", big, "{}", "")+
		policyDoc(big, "p", "{}", "")+
		policyDoc("ns", "r", "{}", "")+"  retentionConfig: {lastAccessTimeout: "+big+"}\n")
	set := Load(dir)
	if len(set.Errors) != 4 {
		t.Fatalf("errors = %d, want 4: %.2000v", len(set.Errors), set.Errors)
	}
	for _, err := range set.Errors {
		if msg := err.Error(); len(msg) > 1024 || !strings.Contains(msg, strings.Repeat("x", v1.MaxQuotedValue)+"…") {
			t.Errorf("%d bytes: %.1100s", len(msg), msg)
		}
	}
}

// Issue 27 item 9: a storage config with spec.allowedNamespaces serves only the policies
// of those namespaces; a policy of another namespace is skipped with an error naming it,
// the config and the field, and the others load.
func TestStorageConfigAllowedNamespaces(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "stores.yaml"), storeDoc+`---
apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotStorageConfig
metadata: {name: team-a-store}
spec:
  allowedNamespaces: [team-a]
  snapshotStorageConfig: {gcs: {bucket: team-a-bucket}}
`)
	onlyA := func(doc string) string {
		return strings.Replace(doc, "storageConfigName: store", "storageConfigName: team-a-store", 1)
	}
	writeFile(t, filepath.Join(dir, "policies.yaml"), onlyA(policyDoc("team-a", "p", "{}", ""))+
		onlyA(policyDoc("team-b", "p", "{}", ""))+policyDoc("team-b", "open", "{}", ""))
	set := Load(dir)
	if got := policyIDs(set); !reflect.DeepEqual(got, []string{"team-a/p", "team-b/open"}) {
		t.Errorf("policies = %v", got)
	}
	want := filepath.Join(dir, "policies.yaml") + `: document 2: PodSnapshotPolicy "team-b/p": spec.storageConfigName: Forbidden: ` +
		`PodSnapshotStorageConfig "team-a-store" does not allow namespace "team-b" (its spec.allowedNamespaces: team-a)`
	if len(set.Errors) != 1 || set.Errors[0].Error() != want {
		t.Fatalf("errors = %v\nwant %s", set.Errors, want)
	}
	if m := set.Match("team-b", map[string]string{"app": "x"}); !m.Found() || m.Policy.Name != "open" {
		t.Errorf("team-b matches %+v, want its policy of the open store", m)
	}
	if m := set.Match("team-a", nil); !m.Found() || m.StoreURL != "gs://team-a-bucket" {
		t.Errorf("team-a matches %+v", m)
	}
}
