//go:build tools

// Package tools pins the Kubernetes commands `hack/deps.sh kube` builds from this module
// (k8s.io/kubernetes at KUBERNETES_VERSION, hack/versions.env) for the end-to-end tests'
// single-node cluster. k8s.io/kubernetes is not meant to be a dependency: its staging
// modules are pinned to the matching v0.x by the replace block in go.mod. A module of
// its own, outside the project's, so its dependencies never mix with the project's.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
