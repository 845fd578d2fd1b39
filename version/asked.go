package version

import (
	"fmt"
	"os"
	"runtime"
)

// Asked prints the version of the binary name, as containerd's shims print theirs, when
// its command line asks for it (-v, --v, -version or --version) and says whether it did.
func Asked(name string) bool {
	for _, a := range os.Args[1:] {
		if a == "-v" || a == "--v" || a == "-version" || a == "--version" {
			fmt.Printf("%s:\n  Version:    %s\n  Revision:   %s\n  Go version: %s\n", name, Version, Revision, runtime.Version())
			return true
		}
	}
	return false
}
