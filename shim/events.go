package shim

import (
	"context"

	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"
)

// forward publishes task events to containerd in the order they were sent, each under
// the topic containerd's runtime.GetTopic assigns its type (what containerd itself uses,
// so a topic cannot drift from the event). containerd's publisher queues a failed publish
// and retries it with backoff, so a containerd restart does not lose an exit; forward
// only logs what finally failed.
func (s *Service) forward(publisher shim.Publisher) {
	ctx := namespaces.WithNamespace(context.Background(), s.namespace)
	for e := range s.events {
		topic := runtime.GetTopic(e)
		if topic == runtime.TaskUnknownTopic {
			// A type containerd has no task topic for: subscribers could not decode it.
			log.G(s.ctx).Warnf("dropping event of unknown type %T", e)
			continue
		}
		if err := publisher.Publish(ctx, topic, e); err != nil {
			log.G(s.ctx).WithError(err).WithField("topic", topic).Error("publish event")
		}
	}
	publisher.Close()
}
