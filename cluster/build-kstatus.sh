#!/usr/bin/env bash
# Builds cluster/kstatus — a small Go program that prints what kstatus (sigs.k8s.io/cli-utils,
# pinned in cluster/kstatus/go.mod) computes for an object — into a cache outside the repository:
#
#   ${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/kstatus/bin/kstatus
#
# Idempotent: a warm cache (stamp file matches go.mod/go.sum/main.go/this script) returns at once.
# Prints the binary's path on stdout; progress goes to stderr. Go modules and the build cache are
# shared with cluster/build.sh (GOMODCACHE/GOCACHE under the same cache root).
#
# Environment:
#   KUBETUNE_CACHE   cache root (default $HOME/.cache/kubetune)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/kstatus"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
ROOT="$CACHE/kstatus"
BIN="$ROOT/bin/kstatus"
STAMP="$ROOT/.complete"

log() { echo "[cluster/build-kstatus.sh $(date +%H:%M:%S)] $*" >&2; }

FP="$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
warm() { [[ -f "$STAMP" && "$(cat "$STAMP")" == "$FP" && -x "$BIN" ]]; }
if warm; then
  echo "$BIN"
  exit 0
fi
command -v go >/dev/null || { log "go not found: install Go (Debian: apt-get install golang-go)"; exit 1; }
command -v flock >/dev/null || { log "flock not found: install util-linux"; exit 1; }

mkdir -p "$ROOT/bin"
exec 9>"$ROOT/.lock"  # one build at a time (pytest-xdist workers, two shells, ...)
flock 9
if warm; then
  echo "$BIN"
  exit 0
fi

# shellcheck source=go-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/go-env.sh"

T0=$(date +%s)
log "go build ./cluster/kstatus (sigs.k8s.io/cli-utils $(grep -o 'sigs.k8s.io/cli-utils v[^ ]*' "$SRC/go.mod" | cut -d' ' -f2))"
(cd "$SRC" && go build -trimpath -ldflags "-s -w" -o "$BIN.tmp" .)
# sanity: it runs, and kstatus calls a ConfigMap Current
echo '{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}' > "$ROOT/sanity.json"
got="$("$BIN.tmp" -f "$ROOT/sanity.json" 2>/dev/null)"
[[ "$got" == Current ]] || { log "sanity check failed: a ConfigMap is '$got', not Current"; exit 1; }
mv -f "$BIN.tmp" "$BIN"
echo "$FP" > "$STAMP"
log "done in $(( $(date +%s) - T0 ))s: $BIN"
echo "$BIN"
