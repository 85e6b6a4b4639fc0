#!/usr/bin/env bash
# On the CPU development machine, before a GPU session: what bench/gpu_run.sh needs there.
#   bash bench/gpu_prepare.sh
# - .whl/: the wheels the GPU machine lacks (../shared/device/fetch-wheels.sh) plus liger-kernel,
#   without wandb and its dependencies (runs there keep W&B off; the folder must stay small);
# - data/stdlib: the quickstart corpus, prepared here so GPU and CPU runs read the same tokens.
# Then call the device with carry [".whl", "data/stdlib"] and the command
#   bash bench/gpu_run.sh correctness        (or: speed)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash ../shared/device/fetch-wheels.sh .whl >/dev/null
# megatron-core within pyproject.toml's range (fetch-wheels takes the newest), and liger-kernel.
rm -f .whl/megatron_core-*
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
  "megatron-core>=0.16,<0.18" liger-kernel
rm -f .whl/wandb-* .whl/sentry_sdk-* .whl/GitPython-* .whl/gitpython-* .whl/gitdb-* .whl/smmap-*
venv=$(bash tools/setup_env.sh)
"$venv/bin/python" -c "import sys; sys.path.insert(0, 'bench'); from harness import ensure_corpus; ensure_corpus()"
du -sh .whl data/stdlib
