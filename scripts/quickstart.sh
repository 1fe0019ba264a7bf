#!/usr/bin/env bash
# Install kubetune (with the trainer stack) and run the main job: the local quickstart
# (QLoRA SFT then DPO of SmolLM2-135M-Instruct on CPU, evaluated and gated). See README.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=$(bash scripts/install.sh | tail -n 1)
export PATH="$venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec bash examples/quickstart/run.sh "$@"
