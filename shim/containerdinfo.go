package shim

import (
	"context"
	"fmt"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/v2/pkg/dialer"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/podsnapshot/podsnapshot/internal/podsnap"
)

// containerdInfo reads container records from containerd's gRPC API over one connection
// for the shim's life. The connection is dialled when the shim starts, while containerd
// is still on its way to the Create call: a pod in a namespace that has policies asks
// for its labels before `runsc create`, and a fresh connection there cost about 5 ms of
// every such start (make bench, plain start).
type containerdInfo struct {
	address string
	conn    *grpc.ClientConn // nil: address unknown or the client could not be made
	err     error            // why conn is nil
}

// newContainerdInfo starts connecting to containerd at address; Close ends it.
func newContainerdInfo(address string) *containerdInfo {
	ci := &containerdInfo{address: address}
	if address == "" {
		ci.err = fmt.Errorf("containerd address unknown")
		return ci
	}
	conn, err := grpc.NewClient(dialer.DialAddress(address),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer.ContextDialer))
	if err != nil {
		ci.err = fmt.Errorf("connect to containerd at %s: %w", address, err)
		return ci
	}
	conn.Connect() // dial now, not at the first call
	ci.conn = conn
	return ci
}

// Close closes the connection.
func (ci *containerdInfo) Close() error {
	if ci.conn == nil {
		return nil
	}
	return ci.conn.Close()
}

// lookup asks containerd for a container's record in namespace. The image digest is
// empty when the container has no image (ctr --rootfs) or the image is gone.
func (ci *containerdInfo) lookup(ctx context.Context, namespace, id string) (podsnap.Record, error) {
	var rec podsnap.Record
	if ci.conn == nil {
		return rec, ci.err
	}
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(ctx, namespace), 10*time.Second)
	defer cancel()
	// WaitForReady: after containerd restarted, a connection that failed meanwhile waits
	// out its reconnect backoff (within the timeout) instead of failing at once.
	resp, err := containersapi.NewContainersClient(ci.conn).Get(ctx, &containersapi.GetContainerRequest{ID: id}, grpc.WaitForReady(true))
	if err != nil {
		return rec, fmt.Errorf("get container %s/%s from containerd at %s: %w", namespace, id, ci.address, err)
	}
	rec.Labels = resp.GetContainer().GetLabels()
	rec.Image = resp.GetContainer().GetImage()
	if rec.Image != "" {
		img, err := imagesapi.NewImagesClient(ci.conn).Get(ctx, &imagesapi.GetImageRequest{Name: rec.Image}, grpc.WaitForReady(true))
		if err == nil {
			rec.ImageDigest = img.GetImage().GetTarget().GetDigest()
		}
	}
	return rec, nil
}
