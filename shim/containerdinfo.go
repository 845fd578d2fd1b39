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

// lookupContainer asks containerd (at its gRPC address) for a container's record. The
// image digest is empty when the container has no image (ctr --rootfs) or the image is
// gone.
func lookupContainer(ctx context.Context, address, namespace, id string) (podsnap.Record, error) {
	var rec podsnap.Record
	if address == "" {
		return rec, fmt.Errorf("containerd address unknown")
	}
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(ctx, namespace), 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(dialer.DialAddress(address),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer.ContextDialer))
	if err != nil {
		return rec, fmt.Errorf("connect to containerd at %s: %w", address, err)
	}
	defer conn.Close()
	resp, err := containersapi.NewContainersClient(conn).Get(ctx, &containersapi.GetContainerRequest{ID: id})
	if err != nil {
		return rec, fmt.Errorf("get container %s/%s from containerd: %w", namespace, id, err)
	}
	rec.Labels = resp.GetContainer().GetLabels()
	rec.Image = resp.GetContainer().GetImage()
	if rec.Image != "" {
		img, err := imagesapi.NewImagesClient(conn).Get(ctx, &imagesapi.GetImageRequest{Name: rec.Image})
		if err == nil {
			rec.ImageDigest = img.GetImage().GetTarget().GetDigest()
		}
	}
	return rec, nil
}
