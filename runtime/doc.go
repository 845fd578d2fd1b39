// Package runtime groups what the shim knows about running containers under gVisor:
// runtime/runsc wraps the runsc command line, runtime/oci reads OCI specs and the
// annotations CRI and gVisor put on them.
package runtime
