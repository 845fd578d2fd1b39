package shim

import (
	"context"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"
)

// forward publishes task events to containerd in the order they were sent. containerd's
// publisher queues a failed publish and retries it with backoff, so a containerd restart
// does not lose an exit; forward only logs what finally failed.
func (s *Service) forward(publisher shim.Publisher) {
	ctx := namespaces.WithNamespace(context.Background(), s.namespace)
	for e := range s.events {
		topic := eventTopic(e)
		if topic == "" {
			log.G(s.ctx).Warnf("dropping event of unknown type %T", e)
			continue
		}
		if err := publisher.Publish(ctx, topic, e); err != nil {
			log.G(s.ctx).WithError(err).WithField("topic", topic).Error("publish event")
		}
	}
	publisher.Close()
}

func eventTopic(e any) string {
	switch e.(type) {
	case *eventstypes.TaskCreate:
		return runtime.TaskCreateEventTopic
	case *eventstypes.TaskStart:
		return runtime.TaskStartEventTopic
	case *eventstypes.TaskExit:
		return runtime.TaskExitEventTopic
	case *eventstypes.TaskDelete:
		return runtime.TaskDeleteEventTopic
	case *eventstypes.TaskExecAdded:
		return runtime.TaskExecAddedEventTopic
	case *eventstypes.TaskExecStarted:
		return runtime.TaskExecStartedEventTopic
	case *eventstypes.TaskPaused:
		return runtime.TaskPausedEventTopic
	case *eventstypes.TaskResumed:
		return runtime.TaskResumedEventTopic
	case *eventstypes.TaskCheckpointed:
		return runtime.TaskCheckpointedEventTopic
	case *eventstypes.TaskOOM:
		return runtime.TaskOOMEventTopic
	}
	return ""
}
