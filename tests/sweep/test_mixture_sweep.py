"""Mixture weights as a sweep axis: `launch/pretrain.py --multirun +data.sources.a.weight=0.2,0.5,0.8` plans
one run per weight in a folder named by it, refuses two runs that would train the same (normalised)
mixture, and trains them: each run's config.yaml holds its weights, its metrics each source's loss.

Sources: two standard-library packages prepared with one 512-token tokenizer (tools/prepare_data.py's code).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megallm.config.compose import config_from_yaml
from megallm.data.prepare import prepare
from megallm.sweep.plan import plan_sweep
from tests.helpers import SMALL_MODEL, assert_one_line_error, run_pretrain, stdlib_subset

BASE = ["train.seq_len=64", "train.global_batch_tokens=256", "train.micro_batch_size=4", "optim.warmup_steps=2",
        "data.streams=4", "data.num_workers=0"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mixture_sweep")
    quiet = dict(val_fraction=0.1, shard_tokens=20_000, tokenizer_train_bytes=1 << 20, log=lambda *_: None)
    files = {name: [p for p in stdlib_subset() if f"/{name}/" in str(p)] for name in ("email", "json")}
    prepare(files["email"], root / "email", vocab_size=512, tokenizer_path=None, **quiet)
    prepare(files["json"], root / "json", vocab_size=520, tokenizer_path=root / "email" / "tokenizer.json", **quiet)
    return {"a": root / "email", "b": root / "json"}


def source_args(sources: dict[str, Path]) -> list[str]:
    return [f"+data.sources.{name}.path={path}" for name, path in sources.items()]


def test_a_weight_axis_plans_one_run_per_weight(sources, tmp_path):
    plan = plan_sweep([*SMALL_MODEL, *source_args(sources), "+data.sources.a.weight=0.2,0.5,0.8", "train.steps=10",
                       f"run_dir={tmp_path / 'mix'}", *BASE])
    assert [r.name for r in plan.runs] == [f"data.sources.a.weight={w}" for w in ("0.2", "0.5", "0.8")]
    assert [r.run_dir for r in plan.runs] == [tmp_path / "mix" / r.name for r in plan.runs]
    assert all("+data.sources.a.weight=" + r.name.split("=")[1] in r.overrides for r in plan.runs)
    assert [r.group for r in plan.runs] == [0, 1, 2]  # different data: no WSD branch shared
    # The FLOPs use the first source's vocabulary (512), not data.path's default corpus.
    flops = [r.flops for r in plan.runs]
    assert flops[0] is not None and flops[0] == flops[1] == flops[2]
    with_vocab = plan_sweep([*SMALL_MODEL, *source_args(sources), "+data.sources.a.weight=0.2,0.5", "train.steps=10",
                             "model.vocab_size=512", f"run_dir={tmp_path / 'v'}", *BASE])
    assert with_vocab.runs[0].flops == flops[0]


def test_two_weight_axes_that_repeat_a_mixture_are_one_line(sources, tmp_path, capsys):
    """a.weight=1,2 x b.weight=1,2 holds 1:1 and 2:2, one mixture trained twice; a,b in {1,3} x {1,2} does not."""
    args = [*SMALL_MODEL, *source_args(sources), "train.steps=10", f"run_dir={tmp_path / 'mix'}", *BASE]
    result = run_pretrain(["--multirun", *args, "+data.sources.a.weight=1,2", "+data.sources.b.weight=1,2",
                           "--dry-run"], timeout=300)
    assert_one_line_error(result, "runs data.sources.a.weight=1,data.sources.b.weight=1 and "
                          "data.sources.a.weight=2,data.sources.b.weight=2 train the same mixture (a 0.5, b 0.5)",
                          "fix one source's weight", prefix="megallm sweep: error: ")
    assert not (tmp_path / "mix").exists()
    plan = plan_sweep([*args, "+data.sources.a.weight=1,3", "+data.sources.b.weight=1,2"])
    assert len(plan.runs) == 4


@pytest.mark.slow
def test_a_weight_sweep_trains_one_run_per_weight(sources, tmp_path):
    sweep = tmp_path / "mix"
    result = run_pretrain(["--multirun", *SMALL_MODEL, *source_args(sources), "+data.sources.a.weight=0.25,0.75",
                           "train.steps=4", "train.eval_every=4", "train.eval_batches=2", "checkpoint.every=0",
                           f"run_dir={sweep}", *BASE], timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep: 2 runs finished" in result.stdout
    planned = json.loads((sweep / "sweep.json").read_text())
    assert [r["name"] for r in planned["runs"]] == ["data.sources.a.weight=0.25", "data.sources.a.weight=0.75"]
    tokens = {}
    for weight in (0.25, 0.75):
        run = sweep / f"data.sources.a.weight={weight}"
        cfg, _ = config_from_yaml((run / "config.yaml").read_text())
        assert {name: s.weight for name, s in cfg.data.source_settings().items()} == {"a": weight, "b": 1.0}
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        final = next(r for r in lines if r["kind"] == "eval" and r["step"] == 4)
        assert {"a/loss", "b/loss", "val_loss"} <= set(final)
        last_train = max((r for r in lines if r["kind"] == "train"), key=lambda r: r["step"])
        tokens[weight] = (last_train["a/tokens"], last_train["b/tokens"])
    # 4 steps x 4 windows of 64 tokens: 16 windows, a's share 0.25/1.25 and 0.75/1.75 of them, exactly up to rounding.
    assert sum(tokens[0.25]) == sum(tokens[0.75]) == 16 * 64
    assert tokens[0.25][0] in (3 * 64, 4 * 64) and tokens[0.75][0] in (6 * 64, 7 * 64)


def test_anneal_mixtures_are_cool_downs_of_one_trunk(sources, tmp_path):
    """WSD runs of 100 and 200 steps, each with two anneal mixtures: one trunk (200 steps, the first anneal)
    trains the stable phase; the other 200-step run and both 100-step runs branch where their decay starts."""
    plan = plan_sweep([*SMALL_MODEL, *source_args(sources), "optim.schedule=wsd", "train.steps=100,200",
                       "+data.anneal.a=0.5,0.8", "+data.anneal.b=1", f"run_dir={tmp_path / 'anneal'}", *BASE])
    assert len(plan.groups) == 1
    branches = {run.name: (run.branch_of, run.branch_step) for run in plan.runs}
    trunk = "data.anneal.a=0.5,train.steps=200"  # folders are named by the swept keys
    assert branches == {trunk: (None, 0), "data.anneal.a=0.8,train.steps=200": (trunk, 160),
                        "data.anneal.a=0.5,train.steps=100": (trunk, 80),
                        "data.anneal.a=0.8,train.steps=100": (trunk, 80)}

