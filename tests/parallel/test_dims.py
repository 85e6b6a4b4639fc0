"""ParallelDims: each rank's coordinates, the one printed form, and what a layout cannot do."""

from __future__ import annotations

import json

import pytest

from megallm.checkpoint.state import RunState
from megallm.model.config import ModelConfig
from megallm.parallel.dims import CLI_OPTIONS, ParallelDims

MODEL = ModelConfig(hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, ffn_hidden_size=128)


def test_ranks_are_ordered_tensor_parallel_fastest_then_data_then_pipeline():
    dims = ParallelDims.for_world(8, tp=2, pp=2, zero_stage=1)
    assert (dims.tp, dims.pp, dims.dp, dims.world_size) == (2, 2, 2, 8)
    coordinates = [dims.coordinates(r) for r in range(8)]
    assert coordinates[:4] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]  # (tp, dp, pp)
    assert coordinates[5] == (1, 0, 1)
    assert [dims.rank(*c) for c in coordinates] == list(range(8))
    assert len(set(coordinates)) == 8


def test_one_printed_form_and_the_reshard_options():
    dims = ParallelDims(tp=2, pp=2, dp=1, zero_stage=1)
    assert str(dims) == "TP=2 x PP=2 x DP=1 ZeRO-1"
    assert dims.options() == "--tp 2 --pp 2 --dp 1 --zero-stage 1"


def test_checkpoint_state_keeps_the_layout_as_json():
    dims = ParallelDims(tp=2, pp=1, dp=4, zero_stage=3)
    saved = json.loads(RunState(layout=dims).to_json())
    assert saved["layout"] == {"tp": 2, "pp": 1, "dp": 4, "zero_stage": 3} and "callbacks" not in saved
    assert RunState(**saved).layout == dims
    assert RunState(layout={}).layout is None  # older weights-only checkpoints


def test_only_replicas_may_change_without_zero():
    base = ParallelDims(tp=2, pp=1, dp=2, zero_stage=0)
    assert base.only_replicas_differ(ParallelDims(tp=2, pp=1, dp=4, zero_stage=0))
    assert not base.only_replicas_differ(ParallelDims(tp=1, pp=1, dp=4, zero_stage=0))
    assert not ParallelDims(dp=2, zero_stage=1).only_replicas_differ(ParallelDims(dp=4, zero_stage=1))


@pytest.mark.parametrize("tp,pp,zero,world,phrase", [
    (3, 1, 0, 3, "parallel.tp=3 does not divide model.num_kv_heads=2"),
    (1, 5, 0, 5, "parallel.pp=5 is more stages than model.num_layers=4"),
    (1, 2, 2, 2, "parallel.zero_stage=2 cannot be combined with parallel.pp=2"),
    (1, 1, 4, 1, "parallel.zero_stage must be 0, 1, 2 or 3, got 4"),
    (2, 1, 0, 3, "3 rank(s) cannot be split into parallel.tp x parallel.pp = 2 x 1"),
    (0, 1, 0, 1, "must be >= 1"),
])
def test_problems_name_the_config_keys(tp, pp, zero, world, phrase):
    problems = ParallelDims.problems(MODEL, tp, pp, zero, world)
    assert problems and phrase in problems[0], problems


def test_problems_name_the_tool_options_when_asked():
    problems = ParallelDims.problems(MODEL, 3, 1, 0, 3, CLI_OPTIONS)
    assert problems[0].startswith("--tp=3 does not divide")
    assert ParallelDims.problems(MODEL, 2, 2, 1, 8) == []
    with pytest.raises(ValueError, match="cannot be split"):
        ParallelDims.for_world(6, tp=4)
