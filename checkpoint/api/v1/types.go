// Package v1 holds the podsnapshot.gke.io/v1 API: PodSnapshotStorageConfig,
// PodSnapshotPolicy, PodSnapshot and PodSnapshotManualTrigger, with defaulting, validation
// and strict YAML decoding. Objects written as podsnapshot.gke.io/v1alpha1 are read too:
// the schema is the same.
//
// The kubebuilder markers here are the source of the CustomResourceDefinitions in
// deploy/kubernetes/crds (make generate: controller-gen, then hack/crdgen adds v1alpha1).
//
// +kubebuilder:object:generate=true
// +groupName=podsnapshot.gke.io
package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is the API group of every kind here.
const GroupName = "podsnapshot.gke.io"

// Versions: V1 is written; V1Alpha1 is accepted when reading.
const (
	Version       = "v1"
	VersionAlpha1 = "v1alpha1"
)

// SchemeGroupVersion is podsnapshot.gke.io/v1.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: Version}

// Kinds.
const (
	KindStorageConfig = "PodSnapshotStorageConfig"
	KindPolicy        = "PodSnapshotPolicy"
	KindSnapshot      = "PodSnapshot"
	KindManualTrigger = "PodSnapshotManualTrigger"
)

// PodSnapshotStorageConfig (cluster-scoped) says where snapshots are stored.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster
// +kubebuilder:storageversion
type PodSnapshotStorageConfig struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              PodSnapshotStorageConfigSpec `json:"spec"`
}

// PodSnapshotStorageConfigSpec is the spec of a PodSnapshotStorageConfig.
type PodSnapshotStorageConfigSpec struct {
	// SnapshotStorageConfig is required and sets exactly one of gcs and local.
	SnapshotStorageConfig SnapshotStorageConfig `json:"snapshotStorageConfig"`
	// AllowedNamespaces, when set, lists the only namespaces whose PodSnapshotPolicies
	// may name this config (e.g. ["team-a"]): a policy of another namespace is refused by
	// the admission policy of deploy/kubernetes/storage-namespace-policy.yaml and, should
	// it exist anyway (created before, or written by hand into a policy directory),
	// skipped by every node's policy loader. Unset or empty: any namespace, as before.
	// Names are DNS labels, at most 256 of them.
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +listType=set
	AllowedNamespaces []string `json:"allowedNamespaces,omitempty"`
}

// SnapshotStorageConfig selects the store: exactly one field is set.
//
// +kubebuilder:validation:XValidation:rule="has(self.gcs) != has(self.local)",message="exactly one of gcs and local must be set"
type SnapshotStorageConfig struct {
	// GCS stores snapshots in a Cloud Storage bucket.
	GCS *GCSStorage `json:"gcs,omitempty"`
	// Local stores snapshots in a directory of the node (this project's addition, for
	// single-node use).
	Local *LocalStorage `json:"local,omitempty"`
}

// GCSStorage is a Cloud Storage location.
type GCSStorage struct {
	// Bucket is the bucket name (required), e.g. "my-snapshots".
	// +kubebuilder:validation:Pattern=`^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$`
	// +kubebuilder:validation:XValidation:rule="!self.contains('..')",message="must not contain .."
	Bucket string `json:"bucket"`
	// Path is an optional folder inside the bucket, e.g. "team/a", without leading or
	// trailing "/".
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('/') && !self.endsWith('/') && !self.contains('//') && !self.split('/').exists(p, p == '.' || p == '..')",message="must be a relative folder without leading or trailing /, //, . or .. parts"
	Path string `json:"path,omitempty"`
	// TokenSource is whose credentials read and write the bucket for a pod: podKSA, the
	// pod's own Kubernetes service account (the node agent mints a token bound to the pod,
	// the shim exchanges it for a Google access token through Workload Identity
	// Federation's Security Token Service, so a pod reaches only what its service account
	// is granted). Unset: the node's credentials (Application Default Credentials of the
	// shim), for every pod of the node. GKE's other value, federatedP4SA (GKE's service
	// agent reading on the pod's behalf), has no equivalent outside GKE and is refused.
	// +kubebuilder:validation:Enum=podKSA;federatedP4SA
	// +kubebuilder:validation:XValidation:rule="self != 'federatedP4SA'",message="federatedP4SA (GKE's service agent) is not available outside GKE: use podKSA, or leave tokenSource unset for the node's credentials"
	TokenSource TokenSource `json:"tokenSource,omitempty"`
}

// TokenSource is GCSStorage.TokenSource.
type TokenSource string

// The values of GCSStorage.TokenSource.
const (
	TokenSourcePodKSA        TokenSource = "podKSA"
	TokenSourceFederatedP4SA TokenSource = "federatedP4SA"
)

// LocalStorage is a directory on the node.
type LocalStorage struct {
	// Path is an absolute directory (required), e.g. "/var/lib/podsnapshot/store".
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/') && self != '/' && !self.endsWith('/') && !self.contains('//') && !self.split('/').exists(p, p == '.' || p == '..')",message="must be a clean absolute directory other than /"
	Path string `json:"path"`
}

// TriggerType says who starts a checkpoint.
// +kubebuilder:validation:Enum=workload;manual
type TriggerType string

const (
	// TriggerWorkload: the workload writes 1 to /proc/gvisor/checkpoint.
	TriggerWorkload TriggerType = "workload"
	// TriggerManual: an operator (podsnapshot checkpoint, containerd Checkpoint, a
	// PodSnapshotManualTrigger) starts it.
	TriggerManual TriggerType = "manual"
)

// PostCheckpoint says what the pod does after a checkpoint.
// +kubebuilder:validation:Enum=resume;stop
type PostCheckpoint string

const (
	// PostCheckpointResume keeps the pod running (the default).
	PostCheckpointResume PostCheckpoint = "resume"
	// PostCheckpointStop stops the pod: it completes.
	PostCheckpointStop PostCheckpoint = "stop"
)

// SnapshotScope says what a snapshot holds.
// +kubebuilder:validation:Enum=whole-pod;rootfs-only
type SnapshotScope string

const (
	// ScopeWholePod saves memory, processes and file systems (the default).
	ScopeWholePod SnapshotScope = "whole-pod"
	// ScopeRootfsOnly saves only each container's root file system changes (gVisor's
	// rootfs overlay upper layer): a restored pod starts its processes afresh on them.
	ScopeRootfsOnly SnapshotScope = "rootfs-only"
)

// PodSnapshotPolicy (namespaced) selects pods to snapshot and says how.
//
// +kubebuilder:object:root=true
// +kubebuilder:storageversion
// +kubebuilder:printcolumn:name="Storage",type=string,JSONPath=`.spec.storageConfigName`
// +kubebuilder:printcolumn:name="Trigger",type=string,JSONPath=`.spec.triggerConfig.type`
// +kubebuilder:printcolumn:name="Scope",type=string,JSONPath=`.spec.snapshotScope`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type PodSnapshotPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              PodSnapshotPolicySpec `json:"spec"`
}

// PodSnapshotPolicySpec is the spec of a PodSnapshotPolicy.
type PodSnapshotPolicySpec struct {
	// Selector (required) picks the pods of the policy's namespace it applies to; an empty
	// selector ({}) selects every pod of the namespace. Operators are In, NotIn (with
	// values), Exists and DoesNotExist (without), as the node checks; the API server
	// refuses the others too (the CEL rules below), instead of a policy that loads
	// nowhere. Sizes are bounded so that one policy stays far below a policy file's
	// 1 MiB: at most 32 matchLabels and 16 matchExpressions of at most 64 values each;
	// keys at most 317 characters, values at most 63 (Kubernetes' label limits).
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])",message="selector operators are In, NotIn, Exists and DoesNotExist"
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, (e.operator in ['In', 'NotIn']) == (has(e.values) && size(e.values) > 0))",message="In and NotIn need values; Exists and DoesNotExist take none"
	// +kubebuilder:validation:XValidation:rule="!has(self.matchLabels) || self.matchLabels.all(k, size(k) <= 317)",message="matchLabels keys are label keys: at most 317 characters (a 253-character prefix, /, a 63-character name)"
	Selector *metav1.LabelSelector `json:"selector"`
	// StorageConfigName (required) names a PodSnapshotStorageConfig.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	StorageConfigName string `json:"storageConfigName"`
	// TriggerConfig (required) says who triggers a checkpoint and what follows it.
	TriggerConfig TriggerConfig `json:"triggerConfig"`
	// RetentionConfig is optional: unset keeps snapshots until deleted.
	RetentionConfig *RetentionConfig `json:"retentionConfig,omitempty"`
	// SnapshotGroupingRules is optional: unset puts all of the policy's snapshots in one group.
	SnapshotGroupingRules *SnapshotGroupingRules `json:"snapshotGroupingRules,omitempty"`
	// SnapshotScope is whole-pod (default: memory, processes and file systems) or
	// rootfs-only (each container's root file system changes; the restored pod starts
	// cold on them).
	// +kubebuilder:default=whole-pod
	SnapshotScope SnapshotScope `json:"snapshotScope,omitempty"`
}

// TriggerConfig says who triggers a checkpoint and what follows it.
type TriggerConfig struct {
	// Type is required: workload or manual.
	Type TriggerType `json:"type"`
	// PostCheckpoint is resume (default) or stop.
	// +kubebuilder:default=resume
	PostCheckpoint PostCheckpoint `json:"postCheckpoint,omitempty"`
}

// RetentionConfig deletes unused snapshots.
type RetentionConfig struct {
	// LastAccessTimeout deletes a snapshot not restored for this long: one or more
	// <integer><unit> terms, largest unit first, units y (365d), mo (30d), d, h, min, e.g.
	// "7d", "1y2mo", "90min". Empty: keep.
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self == '' || self.matches('^([0-9]+y)?([0-9]+mo)?([0-9]+d)?([0-9]+h)?([0-9]+min)?$')",message="must be <integer><unit> terms, largest unit first, units y, mo, d, h, min (e.g. 7d, 1y2mo, 90min)"
	// +kubebuilder:validation:XValidation:rule="self == '' || self.matches('[1-9]')",message="must be longer than 0: leave it empty to keep snapshots until deleted"
	LastAccessTimeout string `json:"lastAccessTimeout,omitempty"`
}

// SnapshotGroupingRules splits a policy's snapshots into groups by label values.
type SnapshotGroupingRules struct {
	// GroupByLabelValue lists pod labels whose values must be equal at checkpoint and
	// restore; each distinct combination of values is one group.
	GroupByLabelValue *GroupByLabelValue `json:"groupByLabelValue,omitempty"`
	// GroupRetentionPolicy bounds the snapshots per group.
	GroupRetentionPolicy *GroupRetentionPolicy `json:"groupRetentionPolicy,omitempty"`
}

// GroupByLabelValue lists the grouping labels.
type GroupByLabelValue struct {
	// Labels are label keys, e.g. ["app", "version"]; no duplicates; at most 32.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=317
	// +kubebuilder:validation:items:Pattern=`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`
	// +listType=set
	Labels []string `json:"labels"`
}

// GroupRetentionPolicy bounds the snapshots per group.
type GroupRetentionPolicy struct {
	// MaxSnapshotCountPerGroup keeps at most this many snapshots per group, deleting the
	// oldest first; 0 (the default) means unlimited; negative is invalid.
	// +kubebuilder:validation:Minimum=0
	MaxSnapshotCountPerGroup int32 `json:"maxSnapshotCountPerGroup,omitempty"`
}

// PodSnapshot (namespaced, named by the snapshot's UUID) is one snapshot. On a node it is a
// view of the manifest (package manifest).
//
// +kubebuilder:object:root=true
// +kubebuilder:storageversion
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Policy",type=string,JSONPath=`.spec.policyName`
// +kubebuilder:printcolumn:name="Scope",type=string,JSONPath=`.status.snapshotScope`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type PodSnapshot struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              PodSnapshotSpec `json:"spec"`
	// +optional
	Status PodSnapshotStatus `json:"status,omitempty"`
}

// PodSnapshotSpec is the spec of a PodSnapshot.
type PodSnapshotSpec struct {
	// PolicyName is the PodSnapshotPolicy (same namespace) the snapshot was taken under.
	// +kubebuilder:validation:MinLength=1
	PolicyName string `json:"policyName"`
}

// Condition types and reasons of a PodSnapshot.
const (
	// ConditionReady is True once every file of the snapshot is stored.
	ConditionReady = "Ready"
	// ReasonAwaitingCheckpoint: Ready is False, no checkpoint has completed yet.
	ReasonAwaitingCheckpoint = "AwaitingCheckpoint"
	// ReasonAllSnapshotsAvailable: Ready is True, the snapshot can be restored.
	ReasonAllSnapshotsAvailable = "AllSnapshotsAvailable"
	// ConditionCheckpoint reports the checkpoint's outcome.
	ConditionCheckpoint = "Checkpoint"
	// ReasonSucceeded: Checkpoint is True.
	ReasonSucceeded = "Succeeded"
	// ReasonFailed: Checkpoint is False; the message says why.
	ReasonFailed = "Failed"
)

// PodSnapshotStatus is the observed state of a PodSnapshot.
type PodSnapshotStatus struct {
	// Conditions are Ready and Checkpoint (see the Condition* and Reason* constants).
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// ObservedGeneration is the metadata.generation the status was written for.
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// LastAccessTime is when a restore last used the snapshot.
	LastAccessTime *metav1.Time `json:"lastAccessTime,omitempty"`
	// StoragePath is where the snapshot's files are, e.g.
	// "gs://bucket/path/ns/policy/uuid".
	StoragePath string `json:"storagePath,omitempty"`
	// SourcePod names the pod the snapshot was taken of ("namespace/name").
	SourcePod string `json:"sourcePod,omitempty"`
	// NodeName is the node that took it: a local store's files are on that node only.
	NodeName string `json:"nodeName,omitempty"`
	// SnapshotScope is what the snapshot holds: whole-pod (memory, processes and file
	// systems) or rootfs-only (each container's root file system changes), as its
	// policy's spec.snapshotScope said when it was taken.
	SnapshotScope SnapshotScope `json:"snapshotScope,omitempty"`
}

// PodSnapshotManualTrigger (namespaced) asks for one checkpoint of a pod.
//
// +kubebuilder:object:root=true
// +kubebuilder:storageversion
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Pod",type=string,JSONPath=`.spec.targetPod`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.conditions[?(@.type=="Triggered")].reason`
// +kubebuilder:printcolumn:name="Snapshot",type=string,JSONPath=`.status.snapshotCreated.name`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.nodeName`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type PodSnapshotManualTrigger struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              PodSnapshotManualTriggerSpec `json:"spec"`
	// +optional
	Status PodSnapshotManualTriggerStatus `json:"status,omitempty"`
}

// PodSnapshotManualTriggerSpec is the spec of a PodSnapshotManualTrigger.
type PodSnapshotManualTriggerSpec struct {
	// TargetPod (required) names a pod in the trigger's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="targetPod is immutable"
	TargetPod string `json:"targetPod"`
}

// PodSnapshotManualTriggerStatus is the observed state of a PodSnapshotManualTrigger.
type PodSnapshotManualTriggerStatus struct {
	// Conditions holds Triggered: True/Complete once the snapshot is committed,
	// False/Failed with a message when it cannot be (no such pod, not on a podsnapshot
	// node, no manual policy, checkpoint failed).
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// SnapshotCreated names the PodSnapshot the trigger produced, once it exists.
	SnapshotCreated *SnapshotReference `json:"snapshotCreated,omitempty"`
	// NodeName is the node whose agent carries the trigger out (the target pod's node),
	// set with its first Triggered condition. The agents' admission policy
	// (deploy/kubernetes/agent-node-policy.yaml) lets only that node's agent write the
	// status afterwards.
	NodeName string `json:"nodeName,omitempty"`
}

// LabelNode is on every PodSnapshot an agent creates: the name of the node whose agent
// created it (status.nodeName, once set, names the same node). The agents' admission
// policy (deploy/kubernetes/agent-node-policy.yaml) lets an agent create only
// PodSnapshots labelled with its own node, and delete or re-point only its own node's.
const LabelNode = "podsnapshot.gke.io/node"

// Condition type and reason of a PodSnapshotManualTrigger; a failed trigger has reason
// ReasonFailed, as a failed checkpoint does.
const (
	ConditionTriggered = "Triggered"
	ReasonComplete     = "Complete"
)

// SnapshotReference names a PodSnapshot in the same namespace.
type SnapshotReference struct {
	Name string `json:"name"`
}

// Object is any of the four kinds (as a pointer): its metadata and its apiVersion/kind.
// +kubebuilder:object:generate=false
type Object interface {
	metav1.Object
	GetObjectKind() schema.ObjectKind
}

// EventReason is the reason of the events the node reports about snapshots, with messages
// such as "Successfully checkpointed the pod to PodSnapshot ns/uuid" and "Successfully
// restored the pod from PodSnapshot ns/uuid".
const EventReason = "GKEPodSnapshotting"
