// Command podsnapshot-shimd is the serving shim of the runtime type
// io.containerd.podsnapshot.v1: one process per pod, started by
// containerd-shim-podsnapshot-v1 (`shim start`, shim/manager), that runs the pod's
// containers under gVisor's runsc and snapshots and restores them. It links the stores
// and the snapshot logic, which containerd's short `shim start` and `shim delete` runs do
// not need; it can run those too. `-v` prints its version.
package main

import (
	"context"

	"github.com/containerd/containerd/v2/pkg/shim"

	podshim "github.com/podsnapshot/podsnapshot/shim"
	"github.com/podsnapshot/podsnapshot/shim/manager"
	_ "github.com/podsnapshot/podsnapshot/storage/gcs"   // gs:// stores
	_ "github.com/podsnapshot/podsnapshot/storage/local" // file:// stores
	"github.com/podsnapshot/podsnapshot/version"
)

func main() {
	if version.Asked(manager.DaemonBinary) {
		return
	}
	podshim.Register()
	shim.RunShim(context.Background(), manager.Manager{})
}
