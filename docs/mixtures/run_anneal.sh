#!/usr/bin/env bash
# The anneal stage of docs/mixtures/README.md: the proxy model of run_sweep.sh under a WSD schedule on the
# even mixture (code, manpages, fortunes 1:1:1), cooled down two ways over its last 40 steps (the WSD decay):
# on the same even mix, and on a code-heavy one (4:1:1). Both anneal mixtures are one sweep axis, so the
# second is a cool-down branched from the first's stable phase (launch/sweep.py plans it).
# Needs the corpora of docs/mixtures/prepare_corpora.sh. Usage: bash docs/mixtures/run_anneal.sh [OUT=runs/mixtures]
set -euo pipefail
OUT=${1:-runs/mixtures}
PY=${PYTHON:-.venv/bin/python}
$PY launch/pretrain.py --multirun +model=tiny model.hidden_size=128 model.num_heads=4 model.num_kv_heads=2 \
    model.ffn_hidden_size=384 train.seq_len=128 train.global_batch_tokens=2048 train.micro_batch_size=16 \
    train.steps=200 optim.warmup_steps=10 optim.lr=3e-3 optim.schedule=wsd train.eval_every=40 \
    train.eval_batches=16 checkpoint.every=0 data.num_workers=0 \
    +data.sources.code.path=data/mixtures/code +data.sources.manpages.path=data/mixtures/manpages \
    +data.sources.fortunes.path=data/mixtures/fortunes \
    +data.anneal.code=1,4 +data.anneal.manpages=1 +data.anneal.fortunes=1 run_dir="$OUT/anneal"
