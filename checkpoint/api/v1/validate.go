package v1

import (
	"fmt"
	"path"
	"strings"

	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/podsnapshot/podsnapshot/checkpoint/retention"
)

// Validate checks a defaulted object and returns every problem as a field error whose text
// reads like kubectl's, e.g. `spec.triggerConfig.type: Unsupported value: "foo": supported
// values: "workload", "manual"`. An empty list means valid. Unknown kinds are an error.
func Validate(obj Object) field.ErrorList {
	switch o := obj.(type) {
	case *PodSnapshotStorageConfig:
		return validateStorageConfig(o)
	case *PodSnapshotPolicy:
		return validatePolicy(o)
	case *PodSnapshot:
		return validateSnapshot(o)
	case *PodSnapshotManualTrigger:
		return validateManualTrigger(o)
	}
	return field.ErrorList{field.InternalError(nil, fmt.Errorf("unknown object type %T", obj))}
}

func validateMeta(obj Object, namespaced bool) field.ErrorList {
	return apivalidation.ValidateObjectMetaAccessor(obj, namespaced, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
}

// isBucketName is Cloud Storage's rule: lowercase letters, digits, '-', '_' and '.',
// starting and ending with a letter or digit, 3 to 222 characters (63 per dot-separated
// part). Checked by hand, not by a regexp: `[...]{1,220}` compiled at package init cost
// every process that links this package (the shim, at each pod's `shim start` and again
// in the shim daemon) 4-13 ms of start-up on the 2-core VM (GODEBUG=inittrace=1).
func isBucketName(s string) bool {
	if len(s) < 3 || len(s) > 222 {
		return false
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !alnum(c) && ((i == 0 || i == len(s)-1) || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return true
}

func validateStorageConfig(c *PodSnapshotStorageConfig) field.ErrorList {
	errs := validateMeta(c, false)
	p := field.NewPath("spec", "snapshotStorageConfig")
	s := c.Spec.SnapshotStorageConfig
	switch {
	case s.GCS == nil && s.Local == nil:
		errs = append(errs, field.Required(p, "must set one of: gcs, local"))
	case s.GCS != nil && s.Local != nil:
		errs = append(errs, field.Forbidden(p.Child("local"), "may not be set together with gcs"))
	case s.GCS != nil:
		errs = append(errs, validateGCS(s.GCS, p.Child("gcs"))...)
	default:
		errs = append(errs, validateLocal(s.Local, p.Child("local"))...)
	}
	return append(errs, validateAllowedNamespaces(c.Spec.AllowedNamespaces, field.NewPath("spec", "allowedNamespaces"))...)
}

// validateAllowedNamespaces requires DNS labels (namespace names), no duplicates, at most
// MaxAllowedNamespaces.
func validateAllowedNamespaces(names []string, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if len(names) > MaxAllowedNamespaces {
		errs = append(errs, field.TooMany(p, len(names), MaxAllowedNamespaces))
	}
	seen := sets.New[string]()
	for i, n := range names {
		for _, msg := range validation.IsDNS1123Label(n) {
			errs = append(errs, field.Invalid(p.Index(i), n, msg))
		}
		if seen.Has(n) {
			errs = append(errs, field.Duplicate(p.Index(i), n))
		}
		seen.Insert(n)
	}
	return errs
}

func validateGCS(g *GCSStorage, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	switch {
	case g.Bucket == "":
		errs = append(errs, field.Required(p.Child("bucket"), ""))
	case !isBucketName(g.Bucket) || strings.Contains(g.Bucket, ".."):
		errs = append(errs, field.Invalid(p.Child("bucket"), g.Bucket,
			"must be 3-222 lowercase letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))
	}
	switch g.TokenSource {
	case "", TokenSourcePodKSA:
	case TokenSourceFederatedP4SA:
		errs = append(errs, field.Forbidden(p.Child("tokenSource"),
			"federatedP4SA (GKE's service agent) is not available outside GKE: use podKSA, or leave tokenSource unset for the node's credentials"))
	default:
		errs = append(errs, field.NotSupported(p.Child("tokenSource"), g.TokenSource, []TokenSource{TokenSourcePodKSA}))
	}
	if g.Path != "" {
		clean := path.Clean(g.Path)
		if strings.HasPrefix(g.Path, "/") || strings.HasSuffix(g.Path, "/") || clean != g.Path || clean == "." || strings.HasPrefix(clean, "..") {
			errs = append(errs, field.Invalid(p.Child("path"), g.Path,
				`must be a relative folder without leading or trailing "/", "//", "." or ".." parts`))
		}
	}
	return errs
}

func validateLocal(l *LocalStorage, p *field.Path) field.ErrorList {
	switch {
	case l.Path == "":
		return field.ErrorList{field.Required(p.Child("path"), "")}
	case !path.IsAbs(l.Path) || path.Clean(l.Path) != l.Path || l.Path == "/":
		return field.ErrorList{field.Invalid(p.Child("path"), l.Path, "must be a clean absolute directory other than /")}
	}
	return nil
}

var (
	triggerTypes    = []TriggerType{TriggerWorkload, TriggerManual}
	postCheckpoints = []PostCheckpoint{PostCheckpointResume, PostCheckpointStop}
	scopes          = []SnapshotScope{ScopeWholePod, ScopeRootfsOnly}
)

func validatePolicy(pol *PodSnapshotPolicy) field.ErrorList {
	errs := validateMeta(pol, true)
	spec := field.NewPath("spec")
	s := pol.Spec
	if s.Selector == nil {
		errs = append(errs, field.Required(spec.Child("selector"), "use {} to select every pod of the namespace"))
	} else {
		errs = append(errs, metav1validation.ValidateLabelSelector(s.Selector, metav1validation.LabelSelectorValidationOptions{}, spec.Child("selector"))...)
		errs = append(errs, validateSelectorSize(s.Selector, spec.Child("selector"))...)
	}
	if s.StorageConfigName == "" {
		errs = append(errs, field.Required(spec.Child("storageConfigName"), "name of a PodSnapshotStorageConfig"))
	} else {
		for _, msg := range apivalidation.NameIsDNSSubdomain(s.StorageConfigName, false) {
			errs = append(errs, field.Invalid(spec.Child("storageConfigName"), s.StorageConfigName, msg))
		}
	}
	tc := spec.Child("triggerConfig")
	errs = append(errs, oneOf(tc.Child("type"), s.TriggerConfig.Type, triggerTypes)...)
	errs = append(errs, oneOf(tc.Child("postCheckpoint"), s.TriggerConfig.PostCheckpoint, postCheckpoints)...)
	if rc := s.RetentionConfig; rc != nil && rc.LastAccessTimeout != "" {
		if d, err := retention.ParseDuration(rc.LastAccessTimeout); err != nil {
			errs = append(errs, field.Invalid(spec.Child("retentionConfig", "lastAccessTimeout"), rc.LastAccessTimeout, err.Error()))
		} else if d <= 0 {
			// 0 would read as "delete at once" and act as "keep": refuse it.
			errs = append(errs, field.Invalid(spec.Child("retentionConfig", "lastAccessTimeout"), rc.LastAccessTimeout,
				"must be longer than 0: leave it empty to keep snapshots until deleted"))
		}
	}
	if g := s.SnapshotGroupingRules; g != nil {
		errs = append(errs, validateGrouping(g, spec.Child("snapshotGroupingRules"))...)
	}
	errs = append(errs, oneOf(spec.Child("snapshotScope"), s.SnapshotScope, scopes)...)
	return errs
}

// validateSelectorSize applies the counts of limits.go (ValidateLabelSelector already
// bounds each key and value's length).
func validateSelectorSize(sel *metav1.LabelSelector, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if n := len(sel.MatchLabels); n > MaxSelectorLabels {
		errs = append(errs, field.TooMany(p.Child("matchLabels"), n, MaxSelectorLabels))
	}
	if n := len(sel.MatchExpressions); n > MaxSelectorExpressions {
		errs = append(errs, field.TooMany(p.Child("matchExpressions"), n, MaxSelectorExpressions))
	}
	for i, e := range sel.MatchExpressions {
		if n := len(e.Values); n > MaxSelectorValues {
			errs = append(errs, field.TooMany(p.Child("matchExpressions").Index(i).Child("values"), n, MaxSelectorValues))
		}
	}
	return errs
}

func validateGrouping(g *SnapshotGroupingRules, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if by := g.GroupByLabelValue; by != nil {
		lp := p.Child("groupByLabelValue", "labels")
		if len(by.Labels) == 0 {
			errs = append(errs, field.Required(lp, "at least one label key"))
		} else if len(by.Labels) > MaxGroupLabels {
			errs = append(errs, field.TooMany(lp, len(by.Labels), MaxGroupLabels))
		}
		seen := sets.New[string]()
		for i, l := range by.Labels {
			for _, msg := range validation.IsQualifiedName(l) {
				errs = append(errs, field.Invalid(lp.Index(i), l, msg))
			}
			if seen.Has(l) {
				errs = append(errs, field.Duplicate(lp.Index(i), l))
			}
			seen.Insert(l)
		}
	}
	if rp := g.GroupRetentionPolicy; rp != nil {
		errs = append(errs, apivalidation.ValidateNonnegativeField(int64(rp.MaxSnapshotCountPerGroup),
			p.Child("groupRetentionPolicy", "maxSnapshotCountPerGroup"))...)
	}
	return errs
}

// oneOf requires v (already defaulted, so empty means missing) to be one of allowed.
func oneOf[T ~string](p *field.Path, v T, allowed []T) field.ErrorList {
	if v == "" {
		return field.ErrorList{field.Required(p, "")}
	}
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return field.ErrorList{field.NotSupported(p, string(v), allowed)}
}

func validateSnapshot(s *PodSnapshot) field.ErrorList {
	errs := validateMeta(s, true)
	if s.Spec.PolicyName == "" {
		errs = append(errs, field.Required(field.NewPath("spec", "policyName"), ""))
	}
	return errs
}

func validateManualTrigger(t *PodSnapshotManualTrigger) field.ErrorList {
	errs := validateMeta(t, true)
	if t.Spec.TargetPod == "" {
		errs = append(errs, field.Required(field.NewPath("spec", "targetPod"), "name of a pod in the trigger's namespace"))
	}
	return errs
}
