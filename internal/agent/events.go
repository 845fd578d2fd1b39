package agent

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// nodeEvent is a core/v1 Event about obj recorded by node's agent: its name is obj's name
// (cut to 200 bytes) + "." + suffix, and it says which node recorded it (source.host and
// reportingInstance), which the agents' admission policy (agent-node-policy.yaml)
// requires of every Event an agent creates.
func nodeEvent(node string, obj corev1.ObjectReference, suffix, reason, typ, msg string, at time.Time) *corev1.Event {
	name := obj.Name
	if len(name) > 200 {
		name = name[:200]
	}
	t := metav1.NewTime(at)
	return &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Namespace: obj.Namespace, Name: name + "." + suffix},
		InvolvedObject: obj,
		Reason:         reason, Message: msg, Type: typ,
		Source:         corev1.EventSource{Component: "podsnapshot-agent", Host: node},
		FirstTimestamp: t, LastTimestamp: t, Count: 1,
		ReportingController: "podsnapshot.gke.io/podsnapshot-agent", ReportingInstance: "podsnapshot-agent-" + node,
	}
}
