#!/usr/bin/env bash
# Builds SeaweedFS' `weed` binary (the S3-compatible server of the s3:// tests) from its Go module
# into a cache outside the repository, keyed by version:
#
#   ${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/seaweedfs-<SEAWEEDFS_VERSION>/bin/weed
#
# SeaweedFS' go.mod has a `replace` (go-bip39 => cosmos/go-bip39), so `go install module@version`
# refuses it: the module is downloaded, copied, and built as the main module, which honours its own
# replace. Idempotent: a stamp (hash of the version and this script) returns a warm cache at once.
# Prints the binary's path on stdout; progress goes to stderr.
#
# Environment: KUBETUNE_CACHE (cache root), KUBETUNE_BUILD_JOBS (go build -p, default 2).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SEAWEEDFS_VERSION="$(sed -n 's/^SEAWEEDFS_VERSION=//p' "$HERE/versions.env")"
[[ -n "$SEAWEEDFS_VERSION" ]] || { echo "SEAWEEDFS_VERSION is not in $HERE/versions.env" >&2; exit 1; }
MODULE=github.com/seaweedfs/seaweedfs

CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
ROOT="$CACHE/seaweedfs-$SEAWEEDFS_VERSION"
BIN="$ROOT/bin/weed"
STAMP="$ROOT/.complete"
JOBS="${KUBETUNE_BUILD_JOBS:-2}"
BUILD_RECIPE=1  # bump when the way the binary is built changes

log() { echo "[cluster/build-seaweedfs.sh $(date +%H:%M:%S)] $*" >&2; }

FP="$({ echo "$SEAWEEDFS_VERSION"; echo "recipe=$BUILD_RECIPE"; } | sha256sum | cut -d' ' -f1)"
warm() { [[ -f "$STAMP" && "$(cat "$STAMP")" == "$FP" && -x "$BIN" ]]; }
if warm; then echo "$BIN"; exit 0; fi

command -v go >/dev/null || { log "go is not installed (apt-get install golang-go)"; exit 1; }
mkdir -p "$ROOT/bin" "$ROOT/tmp"
exec 9>"$ROOT/.lock"  # one build at a time per version
flock 9
if warm; then echo "$BIN"; exit 0; fi

# shellcheck source=go-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/go-env.sh"
T0=$(date +%s)

log "go mod download $MODULE@$SEAWEEDFS_VERSION"
dir="$(cd "$ROOT/tmp" && GOFLAGS= go mod download -json "$MODULE@$SEAWEEDFS_VERSION" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
src="$ROOT/tmp/src"
rm -rf "$src"
cp -r "$dir" "$src"
chmod -R u+w "$src"
log "go build -p $JOBS ./weed (cold: many minutes on 2 cores)"
(cd "$src" && GOFLAGS=-mod=mod go build -p "$JOBS" -trimpath -ldflags "-s -w" -o "$ROOT/tmp/weed" ./weed)
mv -f "$ROOT/tmp/weed" "$BIN"
"$BIN" version >&2
rm -rf "$ROOT/tmp"
echo "$FP" > "$STAMP"
log "done in $(( $(date +%s) - T0 ))s: $BIN"
echo "$BIN"
