package nodeinstall

import (
	"context"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Labeler sets and removes a label of a Node.
type Labeler interface {
	// SetLabel sets key=value on node; errors name the node.
	SetLabel(ctx context.Context, node, key, value string) error
	// RemoveLabel removes key from node; a missing label or node is no error.
	RemoveLabel(ctx context.Context, node, key string) error
}

// KubeLabeler labels Nodes through the API server with JSON merge patches, which touch
// only the one label: no read-modify-write, no conflict with the kubelet's updates.
type KubeLabeler struct {
	Client kubernetes.Interface
}

// SetLabel patches metadata.labels[key] = value.
func (k KubeLabeler) SetLabel(ctx context.Context, node, key, value string) error {
	return k.patch(ctx, node, key, &value)
}

// RemoveLabel patches metadata.labels[key] = null, which deletes it (and is a no-op when
// it is absent); a node that is gone is fine.
func (k KubeLabeler) RemoveLabel(ctx context.Context, node, key string) error {
	err := k.patch(ctx, node, key, nil)
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// patch sends {"metadata":{"labels":{key:value}}}; value nil is JSON null.
func (k KubeLabeler) patch(ctx context.Context, node, key string, value *string) error {
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]*string{key: value}}})
	if err != nil {
		return err
	}
	if _, err := k.Client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("label %s of node %s: %w", key, node, err)
	}
	return nil
}
