#!/usr/bin/env bash
# Masked-language-model pretraining end to end on a laptop CPU: an encoder (the `tiny` shape,
# train.objective=mlm: bidirectional attention within documents, BERT's 80/10/10 masking of 15% of
# the tokens) on the Python standard library, then its masked-token accuracy on held-out files
# against the unigram baseline (tools/evaluate.py --masked-accuracy). Results: docs/mlm/README.md.
# Usage: bash launch/mlm_pretrain.sh [extra Hydra overrides]
#   1. tools/setup_env.sh creates .venv (SETUP=0: use the python on PATH as it is)
#   2. the corpus: $DATA (default data/stdlib, as launch/quickstart.sh prepares it) when its tokenizer
#      has a mask token (manifest.json's mask_id), else data/stdlib_mlm, prepared here if missing
#      (a data/stdlib prepared before tokenizers had <|mask|> is left as it is: runs use it)
#   3. the encoder trains with $NPROC (2) processes over gloo into $RUN_DIR (runs/mlm; re-running resumes)
#   4. masked-token accuracy of its newest checkpoint on every validation window:
#      $RUN_DIR/masked_accuracy.json
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [ "${SETUP:-1}" != 0 ]; then
  venv=$(bash tools/setup_env.sh)
  export PATH="$venv/bin:$PATH"
fi
nproc=${NPROC:-2}
data=${DATA:-data/stdlib}
run_dir=${RUN_DIR:-runs/mlm}

has_mask_token() {
  python -c 'import json, sys; sys.exit(json.load(open(sys.argv[1])).get("mask_id") is None)' "$1/manifest.json"
}
if [ ! -f "$data/manifest.json" ]; then
  python tools/prepare_data.py --python-stdlib --output "$data" --vocab-size 8192
elif ! has_mask_token "$data"; then
  echo "$data has no mask token (prepared before tokenizers had <|mask|>): using data/stdlib_mlm" >&2
  data=data/stdlib_mlm
  [ -f "$data/manifest.json" ] || python tools/prepare_data.py --python-stdlib --output "$data" --vocab-size 8192
fi

torchrun --standalone --nproc_per_node "$nproc" launch/pretrain.py +model=tiny train.objective=mlm \
  run_dir="$run_dir" data.path="$data" \
  train.steps=300 train.seq_len=256 train.global_batch_tokens=4096 train.micro_batch_size=8 \
  optim.lr=2e-3 optim.warmup_steps=30 train.eval_every=100 train.eval_batches=16 \
  checkpoint.every=100 logging.every=10 "$@"

python tools/evaluate.py "$run_dir" --masked-accuracy "$data" --output "$run_dir/masked_accuracy.json"
