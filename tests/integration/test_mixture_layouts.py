"""A mixture of three corpora trains the same model in every parallel layout as in one process, with
one stage changing the mix half-way: TP=2, PP=2, and DP=2 under ZeRO-1 and ZeRO-2 (real gloo ranks).

Which source and window each global sample is reading is exact integer arithmetic, the same in every
layout (tests/data/test_mixture.py checks the rows); what differs is the order in which the layouts
add the same numbers, hence tests/integration/test_parallel_equality.py's tolerances: the loss at
every step and each source's validation loss within 1e-5 relative (84 fp32 eps).
"""

from __future__ import annotations

import pytest

from tests.helpers import SMALL_MODEL, records, train
from tests.mixture_inputs import WEIGHTS, source_args

pytestmark = pytest.mark.slow

STEPS = 8
SCHEDULE = ["train.precision=fp32", "train.seq_len=32", "train.micro_batch_size=2", "train.global_batch_tokens=256",
            f"train.steps={STEPS}", "optim.lr=3e-3", "optim.warmup_steps=2", "logging.every=1",
            f"train.eval_every={STEPS}", "train.eval_batches=2", "checkpoint.every=0",
            "+data.stages=[{at_step:4,weights:{json:0.6,http:0.4}}]"]
LAYOUTS = {"tp2": ["parallel.tp=2"], "pp2": ["+parallel=pp2"], "dp2_zero1": ["parallel.zero_stage=1"],
           "dp2_zero2": ["parallel.zero_stage=2"]}


@pytest.fixture(scope="module")
def runs(mixture_sources, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture_layouts")
    common = [*SMALL_MODEL, "model.num_layers=4", *SCHEDULE, *source_args(mixture_sources)]
    for name, extra in {"single": [], **LAYOUTS}.items():
        result = train([*common, *extra, f"run_dir={root / name}"], nproc=1 if name == "single" else 2)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    return root


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_mixture_trains_the_same_in_every_layout(runs, layout):
    ref, got = records(runs / "single", "train"), records(runs / layout, "train")
    for step in range(1, STEPS + 1):
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5, abs=0), (layout, step)
        assert all(got[step][f"{n}/tokens"] == ref[step][f"{n}/tokens"] for n in WEIGHTS)  # exact: sample counts
    ref_eval, got_eval = records(runs / "single", "eval")[STEPS], records(runs / layout, "eval")[STEPS]
    for name in WEIGHTS:
        assert got_eval[f"{name}/loss"] == pytest.approx(ref_eval[f"{name}/loss"], rel=1e-5), (layout, name)
    # The stage took effect: no email after step 4.
    assert ref[STEPS]["email/tokens"] == ref[4]["email/tokens"] < ref[STEPS]["json/tokens"]
