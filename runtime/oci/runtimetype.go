package oci

// RuntimeType is the containerd runtime type of podsnapshot: containerd resolves it to
// the shim binary containerd-shim-podsnapshot-v1 on its PATH, and CRI runtime handlers
// and `ctr run --runtime` name it. The shim, the tests, the demo and the benchmarks all
// use this constant.
const RuntimeType = "io.containerd.podsnapshot.v1"
