#!/usr/bin/env bash
# The heavy builds the e2e and real-node tests need, started by scripts/test.sh in the background
# while lint, the unit tests and the trainer tests run. On cold caches these builds are most of CI's
# time, and much of it leaves the CPUs idle (module and wheel downloads, single-threaded links, image
# layer writes): run beside the tests, that time is no longer waited for twice.
#
#   bash scripts/build-ahead.sh cluster LOGDIR   # control plane + real-node binaries, kstatus, Kueue
#   bash scripts/build-ahead.sh images  LOGDIR   # SeaweedFS, then the operator and trainer images
#
# Every build takes its own lock and is keyed by its inputs, so a test fixture that needs a build
# before its lane got there waits for it (or does it itself), and warm caches return at once. Each
# step's wall time goes to LOGDIR/timings (the cold-CI breakdown); its output to LOGDIR/<lane>.log.
# Exit status: 0, or 1 when a step failed (the fixture that needs it then fails and says why).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
lane=$1 logs=$2
mkdir -p "$logs"

case "$lane" in
  cluster) steps=("bash cluster/build.sh" "bash cluster/build-kstatus.sh" "bash cluster/build-kueue.sh") ;;
  images) steps=("bash cluster/fetch-seaweedfs.sh" "kubetune dev images build") ;;
  *) echo "usage: $0 cluster|images LOGDIR" >&2; exit 2 ;;
esac

rc=0
cd "$root"
for step in "${steps[@]}"; do
  start=$(date +%s)
  if bash -c "$step" >>"$logs/$lane.log" 2>&1; then status=ok; else status=FAILED; rc=1; fi
  printf '%-40s %5ss %s\n' "$step" "$(( $(date +%s) - start ))" "$status" >>"$logs/timings"
done
exit "$rc"
