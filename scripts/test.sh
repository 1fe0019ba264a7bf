#!/usr/bin/env bash
# Install everything and run every test: lint, types, unit, trainer (real CPU training) and
# end-to-end tests on the local Kubernetes control plane (built from Go modules on first use).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/system-packages.sh
venv=$(bash scripts/install.sh | tail -n 1)
export PATH="$venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "== ruff"
ruff check operator trainer_image cluster tests benchmarks examples
echo "== mypy (strict on the pure core and the operator)"
mypy --strict operator/kubetune/api operator/kubetune/planning operator/kubetune/data \
  operator/kubetune/render operator/kubetune/gates.py operator/kubetune/evaluation operator/kubetune/derivation \
  operator/kubetune/controller operator/kubetune/cli operator/kubetune/checkpoint_selection.py
echo "== pytest"
python -m pytest -q --durations=25 "$@"
