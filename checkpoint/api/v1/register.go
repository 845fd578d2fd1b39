package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// SchemeGroupVersionAlpha1 is podsnapshot.gke.io/v1alpha1: served by the CRDs with the
// same schema as v1, so the guide's manifests apply as written.
var SchemeGroupVersionAlpha1 = schema.GroupVersion{Group: GroupName, Version: VersionAlpha1}

// AddToScheme registers the four kinds and their lists as podsnapshot.gke.io/v1, for
// client-go and controller-runtime clients.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion,
		&PodSnapshotStorageConfig{}, &PodSnapshotStorageConfigList{},
		&PodSnapshotPolicy{}, &PodSnapshotPolicyList{},
		&PodSnapshot{}, &PodSnapshotList{},
		&PodSnapshotManualTrigger{}, &PodSnapshotManualTriggerList{},
	)
	metav1.AddToGroupVersion(s, SchemeGroupVersion)
	return nil
}

// PodSnapshotStorageConfigList is a list of PodSnapshotStorageConfigs.
//
// +kubebuilder:object:root=true
type PodSnapshotStorageConfigList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PodSnapshotStorageConfig `json:"items"`
}

// PodSnapshotPolicyList is a list of PodSnapshotPolicies.
//
// +kubebuilder:object:root=true
type PodSnapshotPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PodSnapshotPolicy `json:"items"`
}

// PodSnapshotList is a list of PodSnapshots.
//
// +kubebuilder:object:root=true
type PodSnapshotList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PodSnapshot `json:"items"`
}

// PodSnapshotManualTriggerList is a list of PodSnapshotManualTriggers.
//
// +kubebuilder:object:root=true
type PodSnapshotManualTriggerList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PodSnapshotManualTrigger `json:"items"`
}
