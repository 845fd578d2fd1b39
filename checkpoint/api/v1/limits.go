package v1

// Size bounds of a PodSnapshotPolicy and a PodSnapshotStorageConfig. The CRDs enforce
// them on the API server (kubebuilder markers; the selector's, a metav1 type without
// markers, set by hack/crdgen from these constants) and Validate enforces them on every
// node, for hand-written files too. They keep one object far below a policy file's limit
// (policy.MaxFileSize, 1 MiB): a selector at every bound is about 100 KB of YAML.
const (
	// MaxSelectorLabels is the most entries of spec.selector.matchLabels.
	MaxSelectorLabels = 32
	// MaxSelectorExpressions is the most entries of spec.selector.matchExpressions.
	MaxSelectorExpressions = 16
	// MaxSelectorValues is the most values of one matchExpressions entry.
	MaxSelectorValues = 64
	// MaxLabelKeyLength is a label key's limit: a 253-character DNS prefix, "/", a
	// 63-character name.
	MaxLabelKeyLength = 253 + 1 + 63
	// MaxLabelValueLength is a label value's limit.
	MaxLabelValueLength = 63
	// MaxSelectorOperatorLength bounds matchExpressions[].operator ("DoesNotExist" is
	// the longest valid one) for the CEL rules' cost.
	MaxSelectorOperatorLength = 16
	// MaxGroupLabels is the most keys of snapshotGroupingRules.groupByLabelValue.labels
	// (the +kubebuilder:validation:MaxItems marker there says the same).
	MaxGroupLabels = 32
	// MaxAllowedNamespaces is the most names of a storage config's
	// spec.allowedNamespaces (its MaxItems marker says the same).
	MaxAllowedNamespaces = 256
)
