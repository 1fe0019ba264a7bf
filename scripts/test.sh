#!/usr/bin/env bash
# Install everything and run every test: lint, types, unit, trainer (real CPU training) and
# end-to-end tests on the local Kubernetes control plane (built from Go modules on first use).
#
# With no arguments, the heavy builds of the e2e and real-node tests (scripts/build-ahead.sh) run in
# the background while lint, the trainer and the unit tests run; the e2e and real-node tests start
# once they are done. With arguments, they go to one pytest run (e.g. `bash scripts/test.sh tests/unit`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
t0=$(date +%s)
phase() { echo "== $1 ($(( $(date +%s) - t0 ))s since the start)"; }
bash scripts/system-packages.sh
ahead=$(mktemp -d "${TMPDIR:-/tmp}/kubetune-build-ahead.XXXXXX")
pids=()
if (($# == 0)); then
  bash scripts/build-ahead.sh cluster "$ahead" & pids+=($!)   # needs Go only: starts before the venv
fi
phase "venv"
venv=$(bash scripts/install.sh | tail -n 1)
export PATH="$venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if (($# == 0)); then
  bash scripts/build-ahead.sh images "$ahead" & pids+=($!)
fi
phase "ruff"
ruff check operator trainer_image cluster tests benchmarks examples
phase "mypy (strict on the pure core and the operator)"
mypy --strict operator/kubetune/api operator/kubetune/planning operator/kubetune/data \
  operator/kubetune/render operator/kubetune/gates.py operator/kubetune/evaluation operator/kubetune/derivation \
  operator/kubetune/controller operator/kubetune/cli operator/kubetune/checkpoint_selection.py
if (($#)); then
  phase "pytest $*"
  exec python -m pytest -q --durations=25 "$@"
fi
rc=0
phase "pytest: trainer and unit tests (the builds run beside them)"
# (trainer before unit: tests/trainer's modules import its conftest by name, which must be the first one loaded)
python -m pytest -q --durations=25 tests/trainer tests/unit || rc=$?
phase "waiting for the builds started ahead"
for pid in "${pids[@]}"; do wait "$pid" || echo "a build failed (the tests that need it say why): $ahead/*.log"; done
cat "$ahead/timings"
phase "pytest: e2e and real-node tests"
python -m pytest -q --durations=25 tests/e2e tests/realnode || rc=$?
phase "done (exit status $rc)"
exit "$rc"
