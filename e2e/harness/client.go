package harness

import (
	"context"
	"testing"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// Client returns a containerd Go client connected to this containerd, closed at cleanup.
// Use it with Context, which carries the namespace.
func (c *Containerd) Client(t testing.TB) *client.Client {
	t.Helper()
	cl, err := client.New(c.Address, client.WithDefaultNamespace(c.Namespace))
	if err != nil {
		t.Fatalf("harness: containerd client for %s: %v", c.Address, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// Context returns ctx with this containerd's namespace, as client calls need.
func (c *Containerd) Context(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, c.Namespace)
}
