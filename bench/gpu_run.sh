#!/usr/bin/env bash
# On the lent GPU machine (Python 3.12, torch + CUDA, no deepspeed / megatron-core / hydra):
#   bash bench/gpu_run.sh correctness|speed [budget seconds, default 480] [more gpu_suite.py options]
# installs the carried wheels (bench/gpu_prepare.sh) into a scratch folder, then runs that part
# of bench/gpu_suite.py, its JSON lines and logs written to $OUT (default bench/results/).
set -euo pipefail
part=${1:?correctness or speed}
budget=${2:-480}
shift $(( $# < 2 ? $# : 2 ))
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${OUT:-$root/bench/results}
mkdir -p "$out"
site=/tmp/megallm-site
[ -d "$site" ] || python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl 2>&1 | tail -2
export PYTHONPATH="$site:$root" DS_BUILD_OPS=0 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
# fp32 CPU references made beforehand on the development machine, where carried (bench/cpu-references)
refs=()
[ -d bench/cpu-references ] && refs=(--cpu-references bench/cpu-references)
python3 bench/gpu_suite.py --part "$part" --budget "$budget" --output "$out/gpu-$part.jsonl" "${refs[@]}" "$@" \
  2>"$out/gpu-$part.log"
