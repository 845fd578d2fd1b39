# podsnapshot: pod snapshots for containerd and gVisor.
#   make deps    build pinned containerd, runsc, fake-gcs-server, crictl and the CNI
#                plugins into _deps/, install the Debian packages the tests use (once)
#   make deps-kube  build etcd and Kubernetes (apiserver, controller-manager, kubelet,
#                kubectl) into _deps/bin for the e2e tests' cluster (once; ~11 min of CPU)
#   make test    deps + deps-kube + build + verify-generate + every test (unit and
#                end-to-end on a private containerd, and a single-node Kubernetes on it)
#   make generate  deep copies and CRDs from checkpoint/api/v1 (controller-gen)
#   make demo-kubernetes  the GKE guide's walkthrough on a private cluster (NODES=2: two nodes)
#   make image   the one OCI image (shim, runsc, CLI, agent) as an archive
#   make push REGISTRY=host:port/path  push it and point deploy/kubernetes at it
#   make demo    deps + build + snapshot/restore demo with timings
#   make bench   deps + build + benchmarks into docs/benchmarks.md and docs/benchmarks.json
include hack/versions.env
-include storage/bench.mk

SHELL := /bin/bash
GO ?= go
OUT := $(CURDIR)/_out
DEPS_BIN := $(CURDIR)/_deps/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/podsnapshot/podsnapshot/version.Version=$(VERSION) \
           -X github.com/podsnapshot/podsnapshot/version.Revision=$(REVISION)
# disable_grpc_modules: cloud.google.com/go/storage without its gRPC directpath and xDS
# modules, which the JSON API client we use never needs. containerd starts the shim
# binary twice per pod; without them each start costs about 15 ms instead of 28 ms.
GOTAGS := disable_grpc_modules
TEST_TIMEOUT ?= 60m

.PHONY: all deps deps-kube deps-runsc build test unit e2e demo demo-kubernetes bench clean generate verify-generate image push

all: build

deps:
	./hack/deps.sh all

# Not part of deps: only the e2e tests need it, and demo and bench should not wait for it.
deps-kube:
	./hack/deps.sh kube

build:
	CGO_ENABLED=0 $(GO) build -tags '$(GOTAGS)' -ldflags '$(LDFLAGS)' -o $(OUT)/bin/ ./cmd/...

# Unit tests need no daemon and run with the race detector (it needs cgo: `make deps`
# installs gcc; without a C compiler go reports CGO_ENABLED=0, and they run without it;
# RACE is read when the recipe runs, after deps). The end-to-end packages
# (./e2e/...) start their own containerd, runsc and fake-gcs-server from _deps/bin and
# spend their time waiting on them, so they run without -race.
RACE = $$([ "$$($(GO) env CGO_ENABLED)" = 1 ] && echo -race)
TEST_ENV := PATH=$(OUT)/bin:$(DEPS_BIN):$$PATH PODSNAPSHOT_BIN=$(OUT)/bin
UNIT_PKGS = $$($(GO) list ./... | grep -v '/e2e$$\|/e2e/')

test: deps deps-kube build verify-generate
	$(TEST_ENV) $(GO) test $(RACE) -count=1 -timeout $(TEST_TIMEOUT) $(UNIT_PKGS)
	$(TEST_ENV) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./e2e/...

# Only the packages that need no daemon (everything but e2e).
unit:
	$(GO) test $(RACE) -count=1 -timeout $(TEST_TIMEOUT) $(UNIT_PKGS)

e2e: deps deps-kube build
	$(TEST_ENV) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./e2e/...

# Snapshot and restore demo on a private containerd (needs root): STORAGE=local|gcs,
# WORKLOAD=slowinit|redis|python|nginx|torch (default slowinit; torch: a PyTorch CPU model
# server with 1 GiB of weights, needs Debian's python3-torch), MIB and SECONDS size the
# slowinit workload (default 256 MiB over 8 s).
STORAGE ?= local
demo: deps build
	$(GO) run ./hack/demo -storage $(STORAGE) $(if $(WORKLOAD),-workload $(WORKLOAD)) $(if $(MIB),-mib $(MIB)) $(if $(SECONDS),-seconds $(SECONDS))

# Benchmarks on a private containerd (needs root; see docs/benchmarks.md): SIZES in MiB,
# RUNS per figure, STORES local,gcs, TORCH=false to skip the torch model server,
# ROOTFS=false to skip the rootfs-only scope (SIZES=none runs only it and torch); e.g.
# `make bench SIZES=64 RUNS=1 STORES=local TORCH=false ROOTFS=false`.
SIZES ?= 64,512,2048
RUNS ?= 3
STORES ?= local,gcs
TORCH ?= true
ROOTFS ?= true
bench: deps build
	$(GO) run ./hack/bench -sizes $(SIZES) -runs $(RUNS) -stores $(STORES) -torch=$(TORCH) -rootfs=$(ROOTFS) \
		-command 'make bench SIZES=$(SIZES) RUNS=$(RUNS) STORES=$(STORES) TORCH=$(TORCH) ROOTFS=$(ROOTFS)'

# The one image (hack/image): the shim, runsc, the CLI and podsnapshot-agent in
# /opt/podsnapshot/bin. `make image` writes it as an archive for `ctr images import`;
# `make push REGISTRY=host:port/path` pushes it as REGISTRY/podsnapshot:$(VERSION) and
# points the images: entry of deploy/kubernetes and deploy/kubernetes/uninstall at it
# (KUSTOMIZATION= names other kustomization files, comma-separated; INSECURE=true pushes over plain HTTP), so `kubectl apply -k
# deploy/kubernetes` installs that image on every node (README, "Kubernetes").
IMAGE ?= podsnapshot.local/podsnapshot:latest
KUSTOMIZATION ?= deploy/kubernetes/kustomization.yaml,deploy/kubernetes/uninstall/kustomization.yaml
INSECURE ?= false
image: build deps-runsc
	$(GO) run ./hack/image -bin $(OUT)/bin -runsc $(DEPS_BIN)/runsc -version $(VERSION) -name $(IMAGE) -o $(OUT)/podsnapshot.tar

push: build deps-runsc
	@[ -n "$(REGISTRY)" ] || { echo "make push: set REGISTRY=host:port/path" >&2; exit 2; }
	$(GO) run ./hack/image -bin $(OUT)/bin -runsc $(DEPS_BIN)/runsc -version $(VERSION) \
		-push $(REGISTRY)/podsnapshot:$(VERSION) -insecure=$(INSECURE) -kustomization $(KUSTOMIZATION)

deps-runsc:
	./hack/deps.sh runsc

# The GKE guide's walkthrough on a private Kubernetes (needs root): podsnapshot installed
# with make push and kubectl apply -k; NODES=2 restores on the node that did not take
# the snapshot.
demo-kubernetes: deps deps-kube build
	$(GO) run ./hack/demo-kubernetes $(if $(NODES),-nodes $(NODES))

# The deep-copy functions and the CRDs (deploy/kubernetes/crds) from the kubebuilder
# markers of checkpoint/api/v1: controller-gen, then hack/crdgen adds the v1alpha1 version.
CONTROLLER_TOOLS_VERSION ?= v0.23.0
generate:
	rm -rf $(OUT)/crd
	$(GO) run sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION) \
		object paths=./checkpoint/api/v1 crd:crdVersions=v1 output:crd:dir=$(OUT)/crd
	$(GO) run ./hack/crdgen -in $(OUT)/crd -out deploy/kubernetes/crds

# Fails when the committed deep copies or CRDs differ from what `make generate` makes of
# checkpoint/api/v1 (a marker changed without regenerating).
verify-generate:
	rm -rf $(OUT)/generated-before && mkdir -p $(OUT)/generated-before
	cp -r checkpoint/api/v1/zz_generated.deepcopy.go deploy/kubernetes/crds $(OUT)/generated-before/
	$(MAKE) --no-print-directory generate
	diff -ru $(OUT)/generated-before/zz_generated.deepcopy.go checkpoint/api/v1/zz_generated.deepcopy.go
	diff -ru $(OUT)/generated-before/crds deploy/kubernetes/crds

clean:
	rm -rf $(OUT)
