#!/usr/bin/env bash
# Builds the pinned tools into $DEPS_DIR (default _deps/, git-ignored) and installs the
# Debian packages the tests need. Each tool is rebuilt only when missing or when its stamp
# records another version, so a second run costs nothing.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
source "$top/hack/versions.env"
DEPS_DIR=${DEPS_DIR:-$top/_deps}
bin="$DEPS_DIR/bin"
mkdir -p "$bin" "$DEPS_DIR/stamps" "$DEPS_DIR/src"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

log() { printf 'deps: %s\n' "$*" >&2; }

# fresh NAME VERSION: true when the stamp for NAME says VERSION and every listed binary exists.
fresh() {
  local name=$1 version=$2; shift 2
  [ "$(cat "$DEPS_DIR/stamps/$name" 2>/dev/null)" = "$version" ] || return 1
  local b; for b in "$@"; do [ -x "$bin/$b" ] || return 1; done
}
stamp() { echo "$2" >"$DEPS_DIR/stamps/$1"; }

# scratch NAME: an empty module directory to `go get` a pinned tool into.
scratch() {
  local d="$DEPS_DIR/src/$1"
  rm -rf "$d"; mkdir -p "$d"
  (cd "$d" && go mod init "podsnapshot.deps/$1" >/dev/null 2>&1)
  echo "$d"
}

build_containerd() {
  if fresh containerd "$CONTAINERD_VERSION" containerd ctr containerd-shim-runc-v2; then return; fi
  log "building containerd $CONTAINERD_VERSION"
  local d; d=$(scratch containerd)
  (cd "$d" && go get "github.com/containerd/containerd/v2@$CONTAINERD_VERSION" &&
    CGO_ENABLED=0 go build -tags no_btrfs -o "$bin/" \
      -ldflags "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
      github.com/containerd/containerd/v2/cmd/containerd \
      github.com/containerd/containerd/v2/cmd/ctr \
      github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2)
  stamp containerd "$CONTAINERD_VERSION"
}

# runsc --version prints GVISOR_VERSION (gVisor's own build stamps runsc/version.version;
# a plain go build leaves VERSION_MISSING). The stamp names the stamping, so a runsc built
# before it is rebuilt once.
build_runsc() {
  if fresh runsc "$GVISOR_VERSION stamped" runsc; then return; fi
  log "building runsc $GVISOR_VERSION"
  local d; d=$(scratch runsc)
  (cd "$d" && go get "gvisor.dev/gvisor/runsc@$GVISOR_VERSION" &&
    CGO_ENABLED=0 go build -o "$bin/runsc" \
      -ldflags "-X gvisor.dev/gvisor/runsc/version.version=$GVISOR_VERSION" gvisor.dev/gvisor/runsc)
  stamp runsc "$GVISOR_VERSION stamped"
}

build_fake_gcs() {
  if fresh fake-gcs-server "$FAKE_GCS_SERVER_VERSION" fake-gcs-server; then return; fi
  log "building fake-gcs-server $FAKE_GCS_SERVER_VERSION"
  local d; d=$(scratch fake-gcs-server)
  (cd "$d" && go get "github.com/fsouza/fake-gcs-server@$FAKE_GCS_SERVER_VERSION" &&
    CGO_ENABLED=0 go build -o "$bin/fake-gcs-server" github.com/fsouza/fake-gcs-server)
  stamp fake-gcs-server "$FAKE_GCS_SERVER_VERSION"
}

build_crictl() {
  if fresh crictl "$CRI_TOOLS_VERSION" crictl; then return; fi
  log "building crictl $CRI_TOOLS_VERSION"
  local d; d=$(scratch crictl)
  (cd "$d" && go get "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" &&
    CGO_ENABLED=0 go build -o "$bin/crictl" \
      -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRI_TOOLS_VERSION" \
      sigs.k8s.io/cri-tools/cmd/crictl)
  stamp crictl "$CRI_TOOLS_VERSION"
}

# CNI plugins go to $DEPS_DIR/cni/bin, the directory containerd's CRI plugin searches.
build_cni() {
  local cni="$DEPS_DIR/cni/bin"
  if [ "$(cat "$DEPS_DIR/stamps/cni" 2>/dev/null)" = "$CNI_PLUGINS_VERSION" ] &&
    [ -x "$cni/loopback" ] && [ -x "$cni/bridge" ] && [ -x "$cni/host-local" ]; then return; fi
  log "building CNI plugins $CNI_PLUGINS_VERSION"
  mkdir -p "$cni"
  local d; d=$(scratch cni)
  (cd "$d" && go get "github.com/containernetworking/plugins@$CNI_PLUGINS_VERSION" &&
    CGO_ENABLED=0 go build -o "$cni/" \
      github.com/containernetworking/plugins/plugins/main/loopback \
      github.com/containernetworking/plugins/plugins/main/bridge \
      github.com/containernetworking/plugins/plugins/ipam/host-local)
  stamp cni "$CNI_PLUGINS_VERSION"
}

# The e2e tests' Kubernetes: etcd and kube-apiserver, kube-controller-manager,
# kube-scheduler (Deployments and DaemonSets place their pods), kubelet, kube-proxy (the
# nodes' Service routing: pods reach the API server through the `kubernetes` Service),
# kubectl, from the modules in hack/kube (their go.mod pins the versions of versions.env;
# a mismatch is an error rather than a silent build of another version). Static, stripped,
# with the version stamps `kubectl version` and the API's /version report. About 11
# minutes of CPU the first time, so `all` leaves it out: `make deps-kube` builds it.
build_kube() {
  local cmds="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"
  local version="$KUBERNETES_VERSION etcd-$ETCD_VERSION"
  # shellcheck disable=SC2086
  if fresh kube "$version" etcd $cmds; then return; fi
  # Same versions, a command added since: build only the missing ones.
  local have=""
  [ "$(cat "$DEPS_DIR/stamps/kube" 2>/dev/null)" = "$version" ] && [ -x "$bin/etcd" ] && have=1
  local src="$top/hack/kube" v
  v=$(cd "$src/k8s" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
  [ "$v" = "$KUBERNETES_VERSION" ] || { log "hack/kube/k8s/go.mod has k8s.io/kubernetes $v, versions.env $KUBERNETES_VERSION"; exit 1; }
  v=$(cd "$src/etcd" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
  [ "$v" = "$ETCD_VERSION" ] || { log "hack/kube/etcd/go.mod has etcd $v, versions.env $ETCD_VERSION"; exit 1; }
  [ -n "$have" ] || { log "building etcd $ETCD_VERSION"
  (cd "$src/etcd" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$bin/etcd" .); }
  # gitVersion etc. as Kubernetes' own build sets them (hack/lib/version.sh), in both
  # version packages: component-base's (servers, /version) and client-go's (kubectl).
  local minor=${KUBERNETES_VERSION#v*.} ldflags="-s -w" pkg
  minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  local c
  for c in $cmds; do
    if [ -n "$have" ] && [ -x "$bin/$c" ]; then continue; fi
    log "building $c $KUBERNETES_VERSION"
    (cd "$src/k8s" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "$ldflags" \
      -o "$bin/$c" "k8s.io/kubernetes/cmd/$c")
  done
  stamp kube "$version"
}

install_debian() {
  local missing=() p
  for p in $DEBIAN_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    log "not root: install ${missing[*]} with apt-get and run again"; exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

what=${1:-all}
case $what in
  all) install_debian; build_containerd; build_runsc; build_fake_gcs; build_crictl; build_cni ;;
  containerd) build_containerd ;;
  runsc) build_runsc ;;
  fake-gcs-server) build_fake_gcs ;;
  crictl) build_crictl ;;
  cni) build_cni ;;
  kube) build_kube ;;
  debian) install_debian ;;
  *) echo "usage: $0 [all|containerd|runsc|fake-gcs-server|crictl|cni|kube|debian] (kube: etcd and Kubernetes for the e2e tests, not in all)" >&2; exit 2 ;;
esac
