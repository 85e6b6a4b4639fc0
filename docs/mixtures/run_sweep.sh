#!/usr/bin/env bash
# The proxy sweep of docs/mixtures/README.md: a 1.4M-parameter model (hidden 128) trained 200 steps of
# 2,048 tokens on 9 mixtures of code, manpages and fortunes (a 3 x 3 grid of weights, fortunes' fixed at 1),
# then 2 held-out mixtures, then the mixing law fitted on the 9 and checked on the 2, and the figures.
# Needs the corpora of docs/mixtures/prepare_corpora.sh. Usage: bash docs/mixtures/run_sweep.sh [OUT=runs/mixtures]
set -euo pipefail
OUT=${1:-runs/mixtures}
PY=${PYTHON:-.venv/bin/python}
COMMON=(+model=tiny model.hidden_size=128 model.num_heads=4 model.num_kv_heads=2 model.ffn_hidden_size=384
        train.seq_len=128 train.global_batch_tokens=2048 train.micro_batch_size=16 train.steps=200
        optim.warmup_steps=10 optim.lr=3e-3 train.eval_every=200 train.eval_batches=16
        checkpoint.every=0 checkpoint.save_last=false data.num_workers=0
        +data.sources.code.path=data/mixtures/code +data.sources.manpages.path=data/mixtures/manpages
        +data.sources.fortunes.path=data/mixtures/fortunes)

# 9 mixtures: one run per (code weight, manpages weight), folders named by them
$PY launch/pretrain.py --multirun "${COMMON[@]}" +data.sources.code.weight=0.25,1,4 \
    +data.sources.manpages.weight=0.25,1,4 run_dir="$OUT/sweep"
# 2 held-out mixtures, (code, manpages, fortunes) = (0.5, 2, 1) and (2, 2, 1), in the same folder
$PY launch/pretrain.py --multirun "${COMMON[@]}" +data.sources.code.weight=0.5,2 +data.sources.manpages.weight=2 \
    run_dir="$OUT/sweep/heldout"
# the law fitted on the 9, checked on the 2 (a rerun of this script skips the finished runs)
$PY tools/mixing_law.py "$OUT/sweep" --holdout heldout/data.sources.code.weight=0.5 \
    heldout/data.sources.code.weight=2 --output "$OUT/fit" | tee "$OUT/fit.txt"
$PY docs/mixtures/plot_sweep.py "$OUT/sweep" docs/mixtures/domain_losses.png "$OUT/fit/fit.json"
cp "$OUT"/fit/*.png docs/mixtures/
