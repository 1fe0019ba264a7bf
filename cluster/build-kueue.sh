#!/usr/bin/env bash
# Builds Kueue's controller-manager (sigs.k8s.io/kueue/cmd/kueue, the only binary the e2e tests need)
# from its Go module into a cache outside the repository, keyed by version:
#
#   ${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/kueue-<KUEUE_VERSION>/bin/kueue
#
# Kueue's go.mod has no `replace`, so `go install module/cmd/kueue@version` builds it as published.
# The module (and so its CRDs, config/components/crd/bases) stays in the shared module cache; the
# tests apply the CRDs from there (`kueue_module_dir` in kubetune_devcluster.kueue). Idempotent: a
# stamp (hash of the version and the recipe) returns a warm cache at once. Prints the binary's path on
# stdout; progress goes to stderr.
#
# Environment: KUBETUNE_CACHE (cache root), KUBETUNE_BUILD_JOBS (go build -p, default 2).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KUEUE_VERSION="$(sed -n 's/^KUEUE_VERSION=//p' "$HERE/versions.env")"
[[ -n "$KUEUE_VERSION" ]] || { echo "KUEUE_VERSION is not in $HERE/versions.env" >&2; exit 1; }
MODULE=sigs.k8s.io/kueue

CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
ROOT="$CACHE/kueue-$KUEUE_VERSION"
BIN="$ROOT/bin/kueue"
STAMP="$ROOT/.complete"
JOBS="${KUBETUNE_BUILD_JOBS:-2}"
BUILD_RECIPE=1  # bump when the way the binary is built changes

log() { echo "[cluster/build-kueue.sh $(date +%H:%M:%S)] $*" >&2; }

FP="$({ echo "$KUEUE_VERSION"; echo "recipe=$BUILD_RECIPE"; } | sha256sum | cut -d' ' -f1)"
warm() { [[ -f "$STAMP" && "$(cat "$STAMP")" == "$FP" && -x "$BIN" ]]; }
if warm; then echo "$BIN"; exit 0; fi

command -v go >/dev/null || { log "go is not installed (apt-get install golang-go)"; exit 1; }
command -v flock >/dev/null || { log "flock not found: install util-linux"; exit 1; }
mkdir -p "$ROOT/bin" "$ROOT/tmp"
exec 9>"$ROOT/.lock"  # one build at a time per version
flock 9
if warm; then echo "$BIN"; exit 0; fi

# shellcheck source=go-env.sh
source "$HERE/go-env.sh"
T0=$(date +%s)

# `go install pkg@version` builds outside any main module: -mod must not be set
log "go install -p $JOBS $MODULE/cmd/kueue@$KUEUE_VERSION (cold: minutes on 2 cores)"
(cd "$ROOT/tmp" && GOFLAGS= GOBIN="$ROOT/tmp" go install -p "$JOBS" -trimpath \
  -ldflags "-s -w -X $MODULE/pkg/version.GitVersion=$KUEUE_VERSION" "$MODULE/cmd/kueue@$KUEUE_VERSION")
"$ROOT/tmp/kueue" --help >/dev/null 2>&1 || { log "the built kueue does not run"; exit 1; }
mv -f "$ROOT/tmp/kueue" "$BIN"
rm -rf "$ROOT/tmp"
echo "$FP" > "$STAMP"
log "done in $(( $(date +%s) - T0 ))s: $BIN"
echo "$BIN"
