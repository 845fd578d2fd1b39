// Command containerd-shim-podsnapshot-v1 is containerd's shim for the runtime type
// io.containerd.podsnapshot.v1. containerd runs it as `shim start`, which starts the
// pod's serving shim, podsnapshot-shimd from the same directory (or joins the one
// running), and as `shim delete` after a serving shim died (shim/manager). It links
// none of the stores nor the snapshot logic, so that it starts as fast as containerd's
// runc shim: it runs once per container. `-v` prints its version.
package main

import (
	"context"

	"github.com/containerd/containerd/v2/pkg/shim"

	"github.com/podsnapshot/podsnapshot/shim/manager"
	"github.com/podsnapshot/podsnapshot/version"
)

func main() {
	if version.Asked(manager.ShimBinary) {
		return
	}
	shim.RunShim(context.Background(), manager.Manager{})
}
