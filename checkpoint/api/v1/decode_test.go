package v1

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	utilerrors "k8s.io/apimachinery/pkg/util/errors"

	"github.com/podsnapshot/podsnapshot/checkpoint/retention"
)

const gkePolicy = `
apiVersion: podsnapshot.gke.io/v1alpha1
kind: PodSnapshotPolicy
metadata:
  name: example-pod-snapshot-policy
  namespace: default
spec:
  storageConfigName: example-pod-snapshot-storage-config
  selector:
    matchLabels:
      app: my-app
  triggerConfig:
    type: workload
    postCheckpoint: resume
`

func TestDecodeGKEPolicyAndDefaults(t *testing.T) {
	obj, err := Decode([]byte(gkePolicy))
	if err != nil {
		t.Fatal(err)
	}
	p, ok := obj.(*PodSnapshotPolicy)
	if !ok {
		t.Fatalf("Decode returned %T", obj)
	}
	if p.Spec.Selector.MatchLabels["app"] != "my-app" || p.Spec.TriggerConfig.Type != TriggerWorkload {
		t.Errorf("decoded %+v", p.Spec)
	}
	if p.Spec.SnapshotScope != ScopeWholePod {
		t.Errorf("snapshotScope default = %q", p.Spec.SnapshotScope)
	}

	minimal := `apiVersion: podsnapshot.gke.io/v1
kind: PodSnapshotPolicy
metadata: {name: p}
spec:
  storageConfigName: s
  selector: {}
  triggerConfig: {type: manual}
`
	obj, err = Decode([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	p = obj.(*PodSnapshotPolicy)
	if p.Namespace != "default" || p.Spec.TriggerConfig.PostCheckpoint != PostCheckpointResume || p.Spec.SnapshotScope != ScopeWholePod {
		t.Errorf("defaults: namespace %q postCheckpoint %q scope %q", p.Namespace, p.Spec.TriggerConfig.PostCheckpoint, p.Spec.SnapshotScope)
	}
}

func TestStoreURL(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"gcs: {bucket: my-bucket, path: my-folder}", "gs://my-bucket/my-folder"},
		{"gcs: {bucket: my-bucket}", "gs://my-bucket"},
		{"local: {path: /var/lib/podsnapshot}", "file:///var/lib/podsnapshot"},
	} {
		obj, err := Decode([]byte("apiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshotStorageConfig\nmetadata: {name: s}\nspec:\n  snapshotStorageConfig:\n    " + tc.doc))
		if err != nil {
			t.Fatalf("%s: %v", tc.doc, err)
		}
		if got := obj.(*PodSnapshotStorageConfig).StoreURL(); got != tc.want {
			t.Errorf("%s: StoreURL = %q; want %q", tc.doc, got, tc.want)
		}
	}
}

// policy returns a valid policy document with the spec's lines replaced by spec.
func policy(spec string) string {
	return "apiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshotPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n" + spec
}

const okSpec = "  storageConfigName: s\n  selector: {matchLabels: {app: a}}\n  triggerConfig: {type: workload}\n"

func TestDecodeErrors(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"unknown trigger type", policy("  storageConfigName: s\n  selector: {}\n  triggerConfig: {type: foo}\n"),
			`PodSnapshotPolicy "ns/p": spec.triggerConfig.type: Unsupported value: "foo": supported values: "workload", "manual"`},
		{"missing trigger type", policy("  storageConfigName: s\n  selector: {}\n  triggerConfig: {}\n"),
			`PodSnapshotPolicy "ns/p": spec.triggerConfig.type: Required value`},
		{"bad postCheckpoint", policy("  storageConfigName: s\n  selector: {}\n  triggerConfig: {type: manual, postCheckpoint: pause}\n"),
			`spec.triggerConfig.postCheckpoint: Unsupported value: "pause": supported values: "resume", "stop"`},
		{"missing storageConfigName", policy("  selector: {}\n  triggerConfig: {type: workload}\n"),
			`PodSnapshotPolicy "ns/p": spec.storageConfigName: Required value: name of a PodSnapshotStorageConfig`},
		{"missing selector", policy("  storageConfigName: s\n  triggerConfig: {type: workload}\n"),
			`spec.selector: Required value: use {} to select every pod of the namespace`},
		{"bad duration unit", policy(okSpec + "  retentionConfig: {lastAccessTimeout: 3w}\n"),
			`spec.retentionConfig.lastAccessTimeout: Invalid value: "3w": unknown unit "w" (units: y, mo, d, h, min)`},
		{"zero duration", policy(okSpec + "  retentionConfig: {lastAccessTimeout: 0d0h}\n"),
			`spec.retentionConfig.lastAccessTimeout: Invalid value: "0d0h": must be longer than 0: leave it empty to keep snapshots until deleted`},
		{"negative count", policy(okSpec + "  snapshotGroupingRules: {groupRetentionPolicy: {maxSnapshotCountPerGroup: -2}}\n"),
			`spec.snapshotGroupingRules.groupRetentionPolicy.maxSnapshotCountPerGroup: Invalid value: -2: must be greater than or equal to 0`},
		{"duplicate group label", policy(okSpec + "  snapshotGroupingRules: {groupByLabelValue: {labels: [app, app]}}\n"),
			`spec.snapshotGroupingRules.groupByLabelValue.labels[1]: Duplicate value: "app"`},
		{"bad scope", policy(okSpec + "  snapshotScope: memory\n"),
			`spec.snapshotScope: Unsupported value: "memory": supported values: "whole-pod", "rootfs-only"`},
		{"unknown field", policy(okSpec + "  retention: {}\n"),
			`PodSnapshotPolicy "ns/p": strict decoding error: unknown field "spec.retention"`},
		{"duplicate key", policy(okSpec + "  storageConfigName: t\n"),
			`key "storageConfigName" already set in map`},
		{"bad operator", policy("  storageConfigName: s\n  selector: {matchExpressions: [{key: a, operator: Like}]}\n  triggerConfig: {type: workload}\n"),
			`spec.selector.matchExpressions[0].operator: Invalid value: "Like": not a valid selector operator`},
		{"In without values", policy("  storageConfigName: s\n  selector: {matchExpressions: [{key: a, operator: In}]}\n  triggerConfig: {type: workload}\n"),
			`spec.selector.matchExpressions[0].values: Required value: must be specified when ` + "`operator` is 'In' or 'NotIn'"},
		{"bad apiVersion", strings.Replace(policy(okSpec), "podsnapshot.gke.io/v1", "podsnapshot.gke.io/v2", 1),
			`apiVersion: Unsupported value: "podsnapshot.gke.io/v2": supported values: "podsnapshot.gke.io/v1", "podsnapshot.gke.io/v1alpha1"`},
		{"other kind", "apiVersion: podsnapshot.gke.io/v1\nkind: ConfigMap\nmetadata: {name: x}\n",
			`kind: Unsupported value: "ConfigMap": supported values: "PodSnapshotStorageConfig", "PodSnapshotPolicy", "PodSnapshot", "PodSnapshotManualTrigger"`},
		{"bad name", strings.Replace(policy(okSpec), "name: p", "name: P_1", 1),
			`metadata.name: Invalid value: "P_1": a lowercase RFC 1123 subdomain`},
		{"storage config without store", "apiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshotStorageConfig\nmetadata: {name: s}\nspec: {snapshotStorageConfig: {}}\n",
			`PodSnapshotStorageConfig "s": spec.snapshotStorageConfig: Required value: must set one of: gcs, local`},
		{"storage config both stores", "apiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshotStorageConfig\nmetadata: {name: s}\nspec: {snapshotStorageConfig: {gcs: {bucket: abc}, local: {path: /x}}}\n",
			`spec.snapshotStorageConfig.local: Forbidden: may not be set together with gcs`},
		{"storage config in a namespace", "apiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshotStorageConfig\nmetadata: {name: s, namespace: ns}\nspec: {snapshotStorageConfig: {local: {path: /x}}}\n",
			`metadata.namespace: Forbidden: not allowed on this type`},
		{"bad bucket", "apiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshotStorageConfig\nmetadata: {name: s}\nspec: {snapshotStorageConfig: {gcs: {bucket: My_Bucket}}}\n",
			`spec.snapshotStorageConfig.gcs.bucket: Invalid value: "My_Bucket"`},
		{"relative local path", "apiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshotStorageConfig\nmetadata: {name: s}\nspec: {snapshotStorageConfig: {local: {path: store}}}\n",
			`spec.snapshotStorageConfig.local.path: Invalid value: "store": must be a clean absolute directory other than /`},
		{"manual trigger without pod", "apiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshotManualTrigger\nmetadata: {name: t}\nspec: {}\n",
			`PodSnapshotManualTrigger "default/t": spec.targetPod: Required value`},
		{"not an object", "- a\n- b\n", "not a Kubernetes object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.doc))
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error:\n  %v\nwant it to contain:\n  %s", err, tc.want)
			}
			var de *DocumentError
			if !errors.As(err, &de) {
				t.Fatalf("error is %T, not *DocumentError", err)
			}
			if agg, ok := de.Err.(utilerrors.Aggregate); ok && len(agg.Errors()) != 1 {
				t.Errorf("want exactly one error, got %d: %v", len(agg.Errors()), err)
			}
		})
	}
}

func TestDecodeAllMultiDocument(t *testing.T) {
	stream := "# leading comment\n---\n" + policy(okSpec) + "---\n# only a comment\n---\n" +
		strings.Replace(policy("  storageConfigName: s\n  selector: {}\n  triggerConfig: {type: foo}\n"), "name: p", "name: q", 1) +
		"---\napiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshotStorageConfig\nmetadata: {name: s}\nspec: {snapshotStorageConfig: {local: {path: /x}}}\n"
	docs, errs := DecodeAll("p.yaml", strings.NewReader(stream))
	if len(docs) != 2 || docs[0].Index != 1 || docs[1].Index != 3 {
		t.Fatalf("docs = %+v", docs)
	}
	if len(errs) != 1 {
		t.Fatalf("errs = %v", errs)
	}
	want := `p.yaml: document 2: PodSnapshotPolicy "ns/q": spec.triggerConfig.type: Unsupported value: "foo": supported values: "workload", "manual"`
	if errs[0].Error() != want {
		t.Errorf("error:\n  %v\nwant\n  %s", errs[0], want)
	}
}

func TestDecodeOtherKinds(t *testing.T) {
	obj, err := Decode([]byte("apiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshot\nmetadata: {name: 0b6c5c8e-4f0e-4a5d-9d4e-2c1f7a9b3e10, namespace: ns}\nspec: {policyName: p}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if obj.(*PodSnapshot).Spec.PolicyName != "p" {
		t.Errorf("%+v", obj)
	}
	obj, err = Decode([]byte("apiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshotManualTrigger\nmetadata: {name: t, namespace: ns}\nspec: {targetPod: web-0}\n"))
	if err != nil || obj.(*PodSnapshotManualTrigger).Spec.TargetPod != "web-0" {
		t.Fatalf("%+v %v", obj, err)
	}
}

func TestPolicyHelpers(t *testing.T) {
	obj, err := Decode([]byte(policy(okSpec + "  retentionConfig: {lastAccessTimeout: 1y2mo}\n  snapshotGroupingRules: {groupByLabelValue: {labels: [app]}, groupRetentionPolicy: {maxSnapshotCountPerGroup: 3}}\n")))
	if err != nil {
		t.Fatal(err)
	}
	p := obj.(*PodSnapshotPolicy)
	r, err := p.RetentionRules()
	if err != nil || r.LastAccessTimeout != retention.Year+2*retention.Month || r.MaxPerGroup != 3 {
		t.Errorf("RetentionRules = %+v, %v", r, err)
	}
	if g := p.GroupLabels(); len(g) != 1 || g[0] != "app" {
		t.Errorf("GroupLabels = %v", g)
	}
	obj, _ = Decode([]byte(policy(okSpec)))
	if r, err := obj.(*PodSnapshotPolicy).RetentionRules(); err != nil || r != (retention.Rules{}) {
		t.Errorf("no retention: %+v, %v", r, err)
	}
}

// Issue 14 item 8: an error quoted the whole value of a field, a name or a kind.
func TestErrorsQuoteShortValues(t *testing.T) {
	big := strings.Repeat("x", 100_000)
	short := strings.Repeat("x", MaxQuotedValue) + "…"
	for name, doc := range map[string]string{
		"unsupported value": policy("  storageConfigName: s\n  selector: {}\n  triggerConfig: {type: " + big + "}\n"),
		"name":              strings.Replace(policy(okSpec), "name: p", "name: "+big, 1),
		"namespace":         strings.Replace(policy(okSpec), "namespace: ns", "namespace: "+big, 1),
		"kind":              strings.Replace(policy(okSpec), "PodSnapshotPolicy", big, 1),
		"apiVersion":        strings.Replace(policy(okSpec), "podsnapshot.gke.io/v1", big, 1),
		"bucket":            "apiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshotStorageConfig\nmetadata: {name: s}\nspec: {snapshotStorageConfig: {gcs: {bucket: " + big + "}}}\n",
		"group label":       policy(okSpec + "  snapshotGroupingRules: {groupByLabelValue: {labels: [" + big + "]}}\n"),
	} {
		_, err := Decode([]byte(doc))
		if err == nil || len(err.Error()) > 2048 || !strings.Contains(err.Error(), short) {
			t.Errorf("%s: %d bytes: %.300v", name, len(fmt.Sprint(err)), err)
		}
	}
	if got := Truncate("ééé", 3); got != "é…" {
		t.Errorf("Truncate cut a character: %q", got)
	}
	// A cause of any length is cut too.
	de := &DocumentError{File: "f", Err: errors.New(big)}
	if n := len(de.Error()); n > 4200 {
		t.Errorf("DocumentError of %d bytes", n)
	}
}
