#!/usr/bin/env bash
# The Debian packages the test suite needs beyond Python, installed only when missing (a second call
# costs nothing): Go and npm build and fetch the local cluster's binaries (cluster/build.sh), gcc and
# libseccomp-dev build runc, iptables is what kube-proxy programs on the real node, buildah and
# mmdebstrap build the operator and trainer images without a Docker engine.
#   KUBETUNE_NO_APT=1   never call apt-get (then a missing tool fails the step that needs it)
set -euo pipefail
need=()
command -v go >/dev/null || need+=(golang-go)
command -v npm >/dev/null || need+=(npm)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
[[ -f /usr/include/seccomp.h ]] || need+=(libseccomp-dev)
command -v iptables >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
command -v buildah >/dev/null || need+=(buildah)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
((${#need[@]})) || exit 0
if [[ "${KUBETUNE_NO_APT:-}" == 1 ]] || ! command -v apt-get >/dev/null; then
  echo "scripts/system-packages.sh: missing ${need[*]} (apt-get unavailable or KUBETUNE_NO_APT=1)" >&2
  exit 0
fi
sudo=""; [[ "$(id -u)" == 0 ]] || sudo="sudo"
echo "scripts/system-packages.sh: apt-get install ${need[*]}" >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
