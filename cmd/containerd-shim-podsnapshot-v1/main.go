// Command containerd-shim-podsnapshot-v1 is containerd's shim for the runtime type
// io.containerd.podsnapshot.v1: it runs pods under gVisor's runsc and snapshots and
// restores them. containerd starts it; `-v` prints its version.
package main

import (
	"context"
	"fmt"
	"os"
	"runtime"

	"github.com/containerd/containerd/v2/pkg/shim"

	podshim "github.com/podsnapshot/podsnapshot/shim"
	_ "github.com/podsnapshot/podsnapshot/storage/gcs"   // gs:// stores
	_ "github.com/podsnapshot/podsnapshot/storage/local" // file:// stores
	"github.com/podsnapshot/podsnapshot/version"
)

func main() {
	for _, a := range os.Args[1:] {
		if a == "-v" || a == "--v" || a == "-version" || a == "--version" {
			fmt.Printf("%s:\n  Version:    %s\n  Revision:   %s\n  Go version: %s\n",
				os.Args[0], version.Version, version.Revision, runtime.Version())
			return
		}
	}
	podshim.Register()
	shim.RunShim(context.Background(), podshim.Manager{})
}
