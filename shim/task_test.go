package shim

import (
	"testing"

	"github.com/podsnapshot/podsnapshot/internal/podsnap"
	"github.com/podsnapshot/podsnapshot/runtime/runsc"
)

// TestRestoreOpts: a restore is always detached in the background; --direct is the
// lifecycle's choice (a node cache entry's plain files), never set by the shim itself
// for a streaming restore's FUSE mount.
func TestRestoreOpts(t *testing.T) {
	cached := restoreOpts(&podsnap.RestoreImage{Dir: "/var/lib/podsnapshot/cache/e", Direct: true}, nil)
	if cached != (runsc.RestoreOpts{ImagePath: "/var/lib/podsnapshot/cache/e", Background: true, Direct: true}) {
		t.Errorf("cached restore: %+v", cached)
	}
	streamed := restoreOpts(&podsnap.RestoreImage{Dir: "/var/lib/podsnapshot/k8s.io/sb/image"}, nil)
	if streamed != (runsc.RestoreOpts{ImagePath: "/var/lib/podsnapshot/k8s.io/sb/image", Background: true}) {
		t.Errorf("streamed restore: %+v", streamed)
	}
}
