#!/usr/bin/env bash
# The main job, end to end on a laptop CPU: environment, corpus, training, evaluation,
# checkpoints. Usage: bash launch/quickstart.sh [extra Hydra overrides]
#   1. tools/setup_env.sh creates .venv (CPU torch, DeepSpeed, megatron-core, ...)
#   2. the Python standard library's source becomes a corpus in data/stdlib (8192-token BPE)
#   3. the `tiny` model trains with 2 processes over gloo, evaluating on held-out files and
#      writing checkpoints to runs/quickstart/ (re-running resumes from the newest one)
#   4. the trained model is exported to a Hugging Face Llama folder, runs/quickstart/hf
#      (checked against transformers' logits), and completes a prompt from it
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=$(bash tools/setup_env.sh)
export PATH="$venv/bin:$PATH"
nproc=${NPROC:-2}

if [ ! -f data/stdlib/manifest.json ]; then
  python tools/prepare_data.py --python-stdlib --output data/stdlib --vocab-size 8192
fi
torchrun --standalone --nproc_per_node "$nproc" launch/pretrain.py +model=tiny \
  run_dir=runs/quickstart data.path=data/stdlib \
  train.steps=300 train.seq_len=256 train.global_batch_tokens=4096 train.micro_batch_size=8 \
  optim.lr=2e-3 optim.warmup_steps=30 train.eval_every=100 train.eval_batches=16 \
  checkpoint.every=100 logging.every=10 "$@"

# Leave megallm: a Hugging Face folder (written afresh from the newest checkpoint), then a sample from it.
rm -rf runs/quickstart/hf
python tools/convert_ckpt.py export runs/quickstart runs/quickstart/hf
python tools/generate.py runs/quickstart/hf --prompt "def read_config(path):" --max-new-tokens 48
