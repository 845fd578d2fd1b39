package v1

// DefaultNamespace is the namespace of a namespaced object that names none, as kubectl
// assumes without a context.
const DefaultNamespace = "default"

// SetDefaults fills the defaults of a decoded object in place: a namespaced kind without
// metadata.namespace gets "default"; a PodSnapshotPolicy gets triggerConfig.postCheckpoint
// "resume" and snapshotScope "whole-pod" when unset. Other fields are left alone.
func SetDefaults(obj Object) {
	switch o := obj.(type) {
	case *PodSnapshotPolicy:
		defaultNamespace(o)
		if o.Spec.TriggerConfig.PostCheckpoint == "" {
			o.Spec.TriggerConfig.PostCheckpoint = PostCheckpointResume
		}
		if o.Spec.SnapshotScope == "" {
			o.Spec.SnapshotScope = ScopeWholePod
		}
	case *PodSnapshot:
		defaultNamespace(o)
	case *PodSnapshotManualTrigger:
		defaultNamespace(o)
	}
}

func defaultNamespace(o Object) {
	if o.GetNamespace() == "" {
		o.SetNamespace(DefaultNamespace)
	}
}
