#!/usr/bin/env bash
# A scaling study in one command, on the README's corpus (the Python standard library, 8192-token BPE):
#   bash launch/scaling_ladder.sh [extra Hydra overrides for every run]
#   1. 4 ladder rungs (conf/model/ladder_2 .. ladder_5: depth L, width 64 L; 1.5M-9.0M parameters)
#      x 3 token budgets (75, 150, 300 steps of 4096 tokens), warmup-stable-decay: per rung the
#      300-step run trains and the shorter budgets are cool-downs branched from its stable phase
#      (launch/sweep.py); runs/ladder/<rung,budget>/ each hold metrics, checkpoints, train.log
#   2. tools/scaling_law.py fits Chinchilla's three approaches with bootstrap intervals (a law the
#      points do not determine is reported as not fitted), checks approach 3 on the largest rung left
#      out of the fit, predicts for 2e7 parameters, and writes fit.json + plots to runs/ladder/fit
# About 45 minutes on 2 CPU cores; re-running skips finished runs and resumes interrupted ones.
# SWEEP_DIR changes the folder; NPROC runs each run on N processes (torchrun).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=$(bash tools/setup_env.sh)
export PATH="$venv/bin:$PATH"
sweep_dir=${SWEEP_DIR:-runs/ladder}

if [ ! -f data/stdlib/manifest.json ]; then
  python tools/prepare_data.py --python-stdlib --output data/stdlib --vocab-size 8192
fi
python launch/sweep.py +model=ladder_2,ladder_3,ladder_4,ladder_5 train.steps=75,150,300 \
  optim.schedule=wsd optim.decay_fraction=0.2 optim.min_lr_ratio=0 optim.lr=2e-3 optim.warmup_steps=20 \
  train.seq_len=256 train.global_batch_tokens=4096 train.micro_batch_size=8 \
  train.eval_every=75 train.eval_batches=16 checkpoint.every=0 logging.every=25 data.num_workers=1 \
  data.path=data/stdlib run_dir="$sweep_dir" --nproc "${NPROC:-1}" "$@"
python tools/scaling_law.py "$sweep_dir" --holdout-largest --predict-params 2e7 --output "$sweep_dir/fit"
