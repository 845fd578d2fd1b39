package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
	"github.com/podsnapshot/podsnapshot/checkpoint/compat"
	"github.com/podsnapshot/podsnapshot/checkpoint/snapkey"
	"github.com/podsnapshot/podsnapshot/storage"
)

var created = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const testUUID = "0b6c5c8e-4f0e-4a5d-9d4e-2c1f7a9b3e10"

func committed() *Manifest {
	m := New("default", "my-app", strings.Repeat("ab", 32), compat.Tuple{RunscVersion: "release-A", Arch: "amd64"}, created)
	m.UUID = testUUID
	m.State = StateCommitted
	m.Labels = map[string]string{"app": "my-app"}
	m.GroupLabels = []snapkey.GroupLabel{{Label: "app", Value: "my-app", Present: true}, {Label: "version"}}
	for _, f := range []string{CheckpointFile, PagesMetaFile, PagesFile} {
		m.Files = append(m.Files, storage.FileInfo{
			Name: ObjectName("default", "my-app", testUUID, f), RawSize: 100, StoredSize: 40, Codec: "zstd",
			XXH64: strings.Repeat("0", 16), CRC32C: 7,
		})
	}
	m.Source = Source{Node: "node-1", Pod: "web-0", PodUID: "uid", SandboxID: "sb",
		Containers: []ContainerInfo{{Name: "sandbox", Sandbox: true}, {Name: "app", Image: "app:1"}}}
	return m
}

func TestRoundTrip(t *testing.T) {
	m := committed()
	m.LastAccessTime = created.Add(time.Hour)
	b, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"apiVersion": "podsnapshot.gke.io/manifest/v1"`)) || b[len(b)-1] != '\n' {
		t.Errorf("encoded:\n%s", b)
	}
	back, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Encode(back)
	if !bytes.Equal(b, again) {
		t.Errorf("round trip differs:\n%s\n%s", b, again)
	}
	if back.Group() != "app=my-app,version!" {
		t.Errorf("Group = %q", back.Group())
	}
	// Unknown fields (a newer writer's additions) are ignored.
	var raw map[string]any
	_ = json.Unmarshal(b, &raw)
	raw["futureField"] = 1
	b2, _ := json.Marshal(raw)
	if _, err := Decode(b2); err != nil {
		t.Errorf("unknown field: %v", err)
	}
	// No lastAccessTime: omitted.
	b, _ = Encode(committed())
	if bytes.Contains(b, []byte("lastAccessTime")) {
		t.Errorf("zero lastAccessTime encoded:\n%s", b)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Manifest)
		want   string
	}{
		{"apiVersion", func(m *Manifest) { m.APIVersion = "v0" },
			`apiVersion: Unsupported value: "v0": supported values: "podsnapshot.gke.io/manifest/v1"`},
		{"uuid", func(m *Manifest) { m.UUID = "x" }, `uuid: Invalid value: "x": must be a lowercase UUID`},
		{"key", func(m *Manifest) { m.Key = "abc" }, `key: Invalid value: "abc": must be 64 lowercase hex digits`},
		{"namespace", func(m *Manifest) { m.Namespace = "" }, `namespace: Invalid value: ""`},
		{"state", func(m *Manifest) { m.State = "Done" }, `state: Unsupported value: "Done": supported values: "Pending", "Committed", "Failed"`},
		{"failed without reason", func(m *Manifest) { m.State = StateFailed }, `reason: Required value: a failed snapshot says why`},
		{"reason when committed", func(m *Manifest) { m.Reason = "x" }, `reason: Forbidden: only a Failed snapshot has a reason`},
		{"committed without files", func(m *Manifest) { m.Files = nil }, `files: Required value: a committed snapshot has files`},
		{"committed without runsc version", func(m *Manifest) { m.Compat.RunscVersion = "" }, `compat.runscVersion: Required value`},
		{"createdAt", func(m *Manifest) { m.CreatedAt = time.Time{} }, `createdAt: Required value`},
		{"file outside", func(m *Manifest) { m.Files[1].Name = "other/my-app/" + testUUID + "/x" },
			`files[1].name: Invalid value: "other/my-app/` + testUUID + `/x": must be inside default/my-app/` + testUUID + `/`},
		{"file name", func(m *Manifest) { m.Files[0].Name = "default/my-app/" + testUUID + "/../x" }, `path element . or ..`},
		{"manifest listed", func(m *Manifest) { m.Files[0].Name = m.ObjectName() }, `the manifest does not list itself`},
		{"duplicate file", func(m *Manifest) { m.Files[1].Name = m.Files[0].Name }, `files[1].name: Duplicate value`},
		{"codec", func(m *Manifest) { m.Files[0].Codec = "gzip" }, `files[0].codec: Unsupported value: "gzip": supported values: "zstd", "none"`},
		{"codec none sizes", func(m *Manifest) { m.Files[0].Codec = "none" }, `files[0].storedSize: Invalid value: 40: must equal rawSize for codec none`},
		{"xxh64", func(m *Manifest) { m.Files[2].XXH64 = "zz" }, `files[2].xxh64: Invalid value: "zz"`},
		{"size", func(m *Manifest) { m.Files[0].RawSize = -1 }, `files[0].rawSize: Invalid value: -1: must be greater than or equal to 0`},
		{"sandboxKey", func(m *Manifest) { m.SandboxKey = "ab" }, `sandboxKey: Invalid value: "ab": must be 64 lowercase hex digits`},
		{"container key", func(m *Manifest) { m.Containers = []ContainerKey{{Name: "app", Key: "x"}} }, `containers[0].key: Invalid value: "x"`},
		{"container name", func(m *Manifest) { m.Containers = []ContainerKey{{Key: strings.Repeat("1", 64)}} }, `containers[0].name: Required value`},
		{"container twice", func(m *Manifest) {
			m.Containers = []ContainerKey{{Name: "a", Key: strings.Repeat("1", 64)}, {Name: "a", Key: strings.Repeat("2", 64)}}
		}, `containers[1].name: Duplicate value: "a"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := committed()
			tc.mutate(m)
			_, err := Encode(m)
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Encode error %v (%T); want *ValidationError", err, err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "manifest ") {
				t.Errorf("error:\n  %v\nwant it to contain\n  %s", err, tc.want)
			}
			b, _ := json.Marshal(m)
			if _, err := Decode(b); err == nil {
				t.Error("Decode accepted it")
			}
		})
	}
	if _, err := Decode([]byte("{")); err == nil {
		t.Error("Decode accepted bad JSON")
	}
	if _, err := Decode(make([]byte, MaxSize+1)); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("oversize: %v", err)
	}
	p := New("default", "p", strings.Repeat("0", 64), compat.Tuple{}, created)
	if err := p.Validate(); err != nil {
		t.Errorf("a new Pending manifest is invalid: %v", err)
	}
	if p.IndexKey() != p.Key {
		t.Errorf("IndexKey of a one-container pod = %q, want its key", p.IndexKey())
	}
	p.SandboxKey = strings.Repeat("1", 64)
	if p.IndexKey() != p.SandboxKey {
		t.Errorf("IndexKey = %q, want the sandbox key", p.IndexKey())
	}
}

func condition(ps *v1.PodSnapshot, typ string) *metav1.Condition {
	for i := range ps.Status.Conditions {
		if ps.Status.Conditions[i].Type == typ {
			return &ps.Status.Conditions[i]
		}
	}
	return nil
}

func TestPodSnapshotView(t *testing.T) {
	m := committed()
	m.LastAccessTime = created.Add(time.Hour)
	ps := m.PodSnapshot("gs://bucket/folder/")
	if ps.Name != testUUID || ps.Namespace != "default" || ps.Spec.PolicyName != "my-app" || ps.Kind != "PodSnapshot" || ps.APIVersion != "podsnapshot.gke.io/v1" {
		t.Errorf("meta: %+v %+v", ps.ObjectMeta, ps.TypeMeta)
	}
	if ps.Status.StoragePath != "gs://bucket/folder/default/my-app/"+testUUID {
		t.Errorf("storagePath = %q", ps.Status.StoragePath)
	}
	if !ps.Status.LastAccessTime.Time.Equal(m.LastAccessTime) || ps.Annotations[KeyAnnotation] != m.Key {
		t.Errorf("status: %+v", ps.Status)
	}
	check := func(ps *v1.PodSnapshot, typ string, status metav1.ConditionStatus, reason string) {
		t.Helper()
		c := condition(ps, typ)
		if c == nil || c.Status != status || c.Reason != reason {
			t.Errorf("%s condition = %+v; want %s/%s", typ, c, status, reason)
		}
	}
	check(ps, v1.ConditionReady, metav1.ConditionTrue, v1.ReasonAllSnapshotsAvailable)
	check(ps, v1.ConditionCheckpoint, metav1.ConditionTrue, v1.ReasonSucceeded)

	// Failed after it was committed (a corrupt download): the checkpoint succeeded, the
	// Ready condition says what was found.
	m.State, m.Reason = StateFailed, "gs://b/p/pages.img.zst: crc32c mismatch: got 1, want 2"
	ps = m.PodSnapshot("")
	check(ps, v1.ConditionReady, metav1.ConditionFalse, v1.ReasonFailed)
	check(ps, v1.ConditionCheckpoint, metav1.ConditionTrue, v1.ReasonSucceeded)
	if c := condition(ps, v1.ConditionReady); !strings.Contains(c.Message, m.Reason) || strings.Contains(c.Message, "no checkpoint") {
		t.Errorf("Ready message = %q; want the reason %q", c.Message, m.Reason)
	}
	if m.Status() != condition(ps, v1.ConditionReady).Reason {
		t.Errorf("Status %q is not the Ready reason", m.Status())
	}

	m.Files, m.Reason = nil, "upload: bucket not found"
	ps = m.PodSnapshot("")
	check(ps, v1.ConditionCheckpoint, metav1.ConditionFalse, v1.ReasonFailed)
	if c := condition(ps, v1.ConditionCheckpoint); c.Message != m.Reason {
		t.Errorf("message = %q", c.Message)
	}

	m.State, m.Reason = StatePending, ""
	ps = m.PodSnapshot("")
	check(ps, v1.ConditionReady, metav1.ConditionFalse, v1.ReasonAwaitingCheckpoint)
	if condition(ps, v1.ConditionCheckpoint) != nil {
		t.Error("a pending snapshot has a Checkpoint condition")
	}
}

func TestLayout(t *testing.T) {
	if got := ObjectName("ns", "pol", testUUID, PagesFile); got != "ns/pol/"+testUUID+"/pages.img.zst" {
		t.Errorf("ObjectName = %q", got)
	}
	if got := PolicyPrefix("ns", "pol"); got != "ns/pol/" {
		t.Errorf("PolicyPrefix = %q", got)
	}
	loc, err := ParseName(ManifestName("ns", "pol", testUUID))
	if err != nil || loc != (Location{"ns", "pol", testUUID, ManifestFile}) {
		t.Errorf("ParseName = %+v, %v", loc, err)
	}
	for _, bad := range []string{"ns/pol/" + testUUID, "ns/pol/not-a-uuid/manifest.json", "ns//x/y", ""} {
		if _, err := ParseName(bad); err == nil {
			t.Errorf("ParseName(%q) accepted", bad)
		}
	}
	seen := map[string]bool{}
	for range 100 {
		u := NewUUID()
		if !IsUUID(u) || u[14] != '4' || seen[u] {
			t.Fatalf("NewUUID = %q", u)
		}
		seen[u] = true
	}
}

func TestSizesAndShortKey(t *testing.T) {
	m := committed()
	if raw, stored := m.Sizes(); raw != 300 || stored != 120 {
		t.Errorf("Sizes = %d, %d; want 300, 120", raw, stored)
	}
	m.Files = nil
	if raw, stored := m.Sizes(); raw != 0 || stored != 0 {
		t.Errorf("Sizes without files = %d, %d", raw, stored)
	}
	if got := ShortKey(strings.Repeat("ab", 32)); got != "abababababababab" {
		t.Errorf("ShortKey = %q", got)
	}
	if got := ShortKey("abc"); got != "abc" {
		t.Errorf("ShortKey of a short key = %q", got)
	}
}
