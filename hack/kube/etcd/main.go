// Command etcd is the etcd server of the end-to-end tests' Kubernetes, built by
// `hack/deps.sh kube` from go.etcd.io/etcd/server/v3 at ETCD_VERSION (hack/versions.env)
// with the same entry point as etcd's own main.go. A module of its own, outside the
// project's, so its dependencies never mix with the project's.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
