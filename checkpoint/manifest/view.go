package manifest

import (
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podsnapshot/podsnapshot/checkpoint/api/v1"
)

// KeyAnnotation carries the snapshot key on the PodSnapshot view.
const KeyAnnotation = v1.GroupName + "/key"

// Status is the STATUS column, the reason of the PodSnapshot's Ready condition as GKE
// shows it: "AllSnapshotsAvailable" (Committed), "Failed" (Failed), or
// "AwaitingCheckpoint" (Pending).
func (m *Manifest) Status() string {
	switch m.State {
	case StateCommitted:
		return v1.ReasonAllSnapshotsAvailable
	case StateFailed:
		return "Failed"
	}
	return v1.ReasonAwaitingCheckpoint
}

// PodSnapshot renders m as the PodSnapshot object the cluster would show. storeURL is the
// store root ("gs://bucket/path" or "file:///dir"); status.storagePath is it joined with
// the snapshot's directory. Conditions:
//
//   - Pending: Ready=False (AwaitingCheckpoint); no Checkpoint condition yet.
//   - Committed: Ready=True (AllSnapshotsAvailable), Checkpoint=True (Succeeded).
//   - Failed: Ready=False (Failed, message "marked failed, not restored: <reason>"). A
//     manifest is stored only once its checkpoint is committed, so a Failed one with
//     files was checkpointed and found unusable later (e.g. its data was corrupt on
//     download): Checkpoint=True (Succeeded). Without files, Checkpoint=False (Failed,
//     message = reason).
func (m *Manifest) PodSnapshot(storeURL string) *v1.PodSnapshot {
	created := metav1.NewTime(m.CreatedAt)
	ps := &v1.PodSnapshot{
		TypeMeta: metav1.TypeMeta{APIVersion: v1.SchemeGroupVersion.String(), Kind: v1.KindSnapshot},
		ObjectMeta: metav1.ObjectMeta{
			Name:              m.UUID,
			Namespace:         m.Namespace,
			CreationTimestamp: created,
			Labels:            m.Labels,
			Annotations:       map[string]string{KeyAnnotation: m.Key},
		},
		Spec: v1.PodSnapshotSpec{PolicyName: m.Policy},
	}
	if storeURL != "" {
		ps.Status.StoragePath = strings.TrimSuffix(storeURL, "/") + "/" + m.Dir()
	}
	ps.Status.SnapshotScope = v1.SnapshotScope(m.ScopeName())
	if !m.LastAccessTime.IsZero() {
		t := metav1.NewTime(m.LastAccessTime)
		ps.Status.LastAccessTime = &t
	}
	cond := func(typ string, status metav1.ConditionStatus, reason, msg string) metav1.Condition {
		return metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, LastTransitionTime: created}
	}
	switch m.State {
	case StateCommitted:
		ps.Status.Conditions = []metav1.Condition{
			cond(v1.ConditionReady, metav1.ConditionTrue, v1.ReasonAllSnapshotsAvailable, "every snapshot file is stored"),
			cond(v1.ConditionCheckpoint, metav1.ConditionTrue, v1.ReasonSucceeded, "the pod was checkpointed"),
		}
	case StateFailed:
		// Say what was found, not that no checkpoint succeeded: the reason MarkFailed
		// recorded (for a corrupt download, the object and the mismatch).
		checkpoint := cond(v1.ConditionCheckpoint, metav1.ConditionFalse, v1.ReasonFailed, m.Reason)
		if len(m.Files) > 0 {
			checkpoint = cond(v1.ConditionCheckpoint, metav1.ConditionTrue, v1.ReasonSucceeded,
				"the pod was checkpointed; the stored snapshot was found unusable later (see Ready)")
		}
		ps.Status.Conditions = []metav1.Condition{
			cond(v1.ConditionReady, metav1.ConditionFalse, v1.ReasonFailed, "marked failed, not restored: "+m.Reason),
			checkpoint,
		}
	default:
		ps.Status.Conditions = []metav1.Condition{
			cond(v1.ConditionReady, metav1.ConditionFalse, v1.ReasonAwaitingCheckpoint, "waiting for the checkpoint"),
		}
	}
	return ps
}
