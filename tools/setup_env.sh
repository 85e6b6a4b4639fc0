#!/usr/bin/env bash
# Creates (or updates) the virtual environment megallm runs in, then prints its path.
#   bash tools/setup_env.sh            -> .venv beside this checkout (MEGALLM_VENV overrides)
# Order matters: torch first (the CPU build where no GPU is present, so pip never pulls
# GBs of CUDA wheels), then DeepSpeed from source against that torch with its C++/CUDA
# ops left to build just-in-time, then megallm itself with every extra the two README commands
# use (the applications' libraries, megallm.extras) and the test extra.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MEGALLM_VENV:-$root/.venv}
python=${PYTHON:-python3}
stamp="$venv/.megallm-installed"
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }

if [ ! -x "$venv/bin/python" ]; then
  echo "creating virtual environment $venv" >&2
  "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
  # The checks print nothing: stdout is the venv's path (DeepSpeed logs a warning there at import).
  if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1; then
      "${pip[@]}" "torch>=2.5" 2>&1 | quiet >&2
    else
      "${pip[@]}" "${MEGALLM_CPU_TORCH:-torch==2.13.0}" 2>&1 | quiet >&2
    fi
  fi
  "${pip[@]}" setuptools wheel ninja 2>&1 | quiet >&2
  if ! "$venv/bin/python" -c "import deepspeed" >/dev/null 2>&1; then
    echo "installing deepspeed (from source, ops built just-in-time)" >&2
    DS_BUILD_OPS=0 "${pip[@]}" --no-build-isolation "deepspeed>=0.16" 2>&1 | quiet >&2
  fi
  "${pip[@]}" -e "$root[eval,harness,scaling,hf,parquet,test]" 2>&1 | quiet >&2
  touch "$stamp"
fi
echo "$venv"
