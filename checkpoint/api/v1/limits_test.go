package v1

import (
	"fmt"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// maxPolicy is a policy at every bound of limits.go, each key and value at its longest.
func maxPolicy() *PodSnapshotPolicy {
	key := func(i int) string {
		prefix := strings.Repeat("p", 250) + fmt.Sprintf("%03d", i)
		return prefix + "/" + strings.Repeat("n", 63)
	}
	val := func(i int) string { return fmt.Sprintf("%03d", i) + strings.Repeat("v", MaxLabelValueLength-3) }
	sel := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := range MaxSelectorLabels {
		sel.MatchLabels[key(i)] = val(i)
	}
	for i := range MaxSelectorExpressions {
		e := metav1.LabelSelectorRequirement{Key: key(i), Operator: metav1.LabelSelectorOpIn}
		for j := range MaxSelectorValues {
			e.Values = append(e.Values, val(j))
		}
		sel.MatchExpressions = append(sel.MatchExpressions, e)
	}
	labels := make([]string, MaxGroupLabels)
	for i := range labels {
		labels[i] = key(i)
	}
	p := &PodSnapshotPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: SchemeGroupVersion.String(), Kind: KindPolicy},
		ObjectMeta: metav1.ObjectMeta{Namespace: strings.Repeat("n", 63), Name: strings.Repeat("m", 253)},
		Spec: PodSnapshotPolicySpec{Selector: sel, StorageConfigName: strings.Repeat("s", 253),
			TriggerConfig:         TriggerConfig{Type: TriggerWorkload, PostCheckpoint: PostCheckpointResume},
			RetentionConfig:       &RetentionConfig{LastAccessTimeout: "1y"},
			SnapshotGroupingRules: &SnapshotGroupingRules{GroupByLabelValue: &GroupByLabelValue{Labels: labels}},
			SnapshotScope:         ScopeWholePod},
	}
	return p
}

// Issue 27 item 1: one policy's selector could fill a policy file (1 MiB) by itself. A
// policy at every bound is valid and under a tenth of it; one more label, expression,
// value or grouping label is refused naming the field.
func TestPolicySizeBounds(t *testing.T) {
	p := maxPolicy()
	if errs := Validate(p); len(errs) > 0 {
		t.Fatalf("policy at the bounds refused: %v", errs.ToAggregate())
	}
	out, err := yaml.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) > (1<<20)/10 {
		t.Errorf("a policy at the bounds is %d bytes of YAML, want under a tenth of 1 MiB", len(out))
	}
	t.Logf("a policy at the bounds: %d bytes of YAML", len(out))

	for _, c := range []struct {
		grow func(p *PodSnapshotPolicy)
		want string
	}{
		{func(p *PodSnapshotPolicy) { p.Spec.Selector.MatchLabels["extra"] = "x" },
			"spec.selector.matchLabels: Too many: 33: must have at most 32 items"},
		{func(p *PodSnapshotPolicy) {
			p.Spec.Selector.MatchExpressions = append(p.Spec.Selector.MatchExpressions, metav1.LabelSelectorRequirement{Key: "a", Operator: "Exists"})
		}, "spec.selector.matchExpressions: Too many: 17: must have at most 16 items"},
		{func(p *PodSnapshotPolicy) {
			p.Spec.Selector.MatchExpressions[3].Values = append(p.Spec.Selector.MatchExpressions[3].Values, "x")
		}, "spec.selector.matchExpressions[3].values: Too many: 65: must have at most 64 items"},
		{func(p *PodSnapshotPolicy) {
			g := p.Spec.SnapshotGroupingRules.GroupByLabelValue
			g.Labels = append(g.Labels, "extra")
		}, "spec.snapshotGroupingRules.groupByLabelValue.labels: Too many: 33: must have at most 32 items"},
	} {
		p := maxPolicy()
		c.grow(p)
		if got := Validate(p).ToAggregate(); got == nil || got.Error() != c.want {
			t.Errorf("got %v\nwant %s", got, c.want)
		}
	}
}

// Issue 27 item 9: spec.allowedNamespaces holds DNS labels, without duplicates, at most
// MaxAllowedNamespaces; AllowsNamespace is true for any namespace when it is empty.
func TestAllowedNamespaces(t *testing.T) {
	c := &PodSnapshotStorageConfig{ObjectMeta: metav1.ObjectMeta{Name: "s"},
		Spec: PodSnapshotStorageConfigSpec{SnapshotStorageConfig: SnapshotStorageConfig{Local: &LocalStorage{Path: "/s"}}}}
	if !c.AllowsNamespace("any") {
		t.Error("a config without allowedNamespaces refuses a namespace")
	}
	c.Spec.AllowedNamespaces = []string{"team-a", "team-b"}
	if errs := Validate(c); len(errs) > 0 {
		t.Fatal(errs.ToAggregate())
	}
	if !c.AllowsNamespace("team-b") || c.AllowsNamespace("team-c") {
		t.Errorf("AllowsNamespace: team-b %v, team-c %v", c.AllowsNamespace("team-b"), c.AllowsNamespace("team-c"))
	}
	c.Spec.AllowedNamespaces = []string{"team-a", "Team_B", "team-a"}
	got := Validate(c).ToAggregate()
	want := `[spec.allowedNamespaces[1]: Invalid value: "Team_B": a lowercase RFC 1123 label must consist of`
	if got == nil || !strings.HasPrefix(got.Error(), want) || !strings.Contains(got.Error(), `spec.allowedNamespaces[2]: Duplicate value: "team-a"`) {
		t.Errorf("got %v", got)
	}
	c.Spec.AllowedNamespaces = make([]string, MaxAllowedNamespaces+1)
	for i := range c.Spec.AllowedNamespaces {
		c.Spec.AllowedNamespaces[i] = fmt.Sprintf("ns-%d", i)
	}
	if got := Validate(c).ToAggregate(); got == nil || got.Error() != "spec.allowedNamespaces: Too many: 257: must have at most 256 items" {
		t.Errorf("got %v", got)
	}
}
