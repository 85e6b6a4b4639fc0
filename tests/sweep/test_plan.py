"""A sweep's plan: Hydra's sweep grammar expanded in its order, folders named from the swept values,
WSD trunks and branches, the compute they save, and one-line errors before anything trains."""

from __future__ import annotations

import json

import pytest

from megallm.cli.sweep import main
from megallm.errors import ConfigError
from megallm.sweep.plan import expand, plan_sweep, run_name
from tests.helpers import assert_one_line_error, run_main

BASE = ["train.seq_len=64", "train.global_batch_tokens=512", "train.micro_batch_size=8", "optim.warmup_steps=5",
        "model.vocab_size=512"]


def test_expansion_follows_hydras_basic_sweeper():
    fixed, runs = expand(["+model=ladder_2,ladder_3", "optim.lr=1e-3", "train.steps=range(100,301,100)"])
    assert fixed == ["optim.lr=1e-3"]
    assert len(runs) == 6 and runs[0] == [("+model", "ladder_2"), ("train.steps", "100")]
    assert runs[1] == [("+model", "ladder_2"), ("train.steps", "200")]  # the last key fastest
    assert run_name(runs[5]) == "model=ladder_3,train.steps=300"


def test_wsd_runs_of_one_size_share_a_trunk(tmp_path):
    plan = plan_sweep(["+model=ladder_2,ladder_3", "train.steps=100,200,400", "optim.schedule=wsd",
                       f"run_dir={tmp_path / 'ladder'}", *BASE])
    assert [r.name for r in plan.runs[:3]] == ["model=ladder_2,train.steps=400", "model=ladder_2,train.steps=200",
                                               "model=ladder_2,train.steps=100"]
    trunk, b200, b100 = plan.runs[:3]
    assert trunk.branch_of is None and trunk.at_steps == [80, 160]
    assert "checkpoint.at_steps=[80,160]" in trunk.overrides and "logging.wandb.group=ladder" in trunk.overrides
    assert (b200.branch_of, b200.branch_step, b100.branch_step) == (trunk.name, 160, 80)
    assert b200.branch_checkpoint == tmp_path / "ladder" / trunk.name / "checkpoints" / "step_00000160"
    assert b200.run_dir == tmp_path / "ladder" / "model=ladder_2,train.steps=200"
    assert [r.group for r in plan.runs] == [0, 0, 0, 1, 1, 1]
    planned, separate = plan.compute()
    # Per size: 400 steps, then 40 + 20 decay steps, against 700 steps trained separately.
    assert planned / separate == pytest.approx(460 / 700)
    saved = json.loads(plan.to_json())
    assert saved["runs"][1]["branch_step"] == 160 and saved["flops_separate_runs"] == pytest.approx(separate)


def test_cosine_runs_and_no_branch_train_every_budget_from_scratch(tmp_path):
    for extra in (["optim.schedule=cosine"], ["optim.schedule=wsd"]):
        plan = plan_sweep(["+model=ladder_2", "train.steps=100,200", f"run_dir={tmp_path}", *BASE, *extra],
                          branch=extra == ["optim.schedule=cosine"])
        assert all(r.branch_of is None and not r.at_steps for r in plan.runs)
        planned, separate = plan.compute()
        assert planned == separate


@pytest.mark.parametrize("args, phrases", [
    (["+model=ladder_2", "train.steps=100,-5"], ["run train.steps=-5", "train.steps must be > 0"]),
    (["+model=ladder_2", "train.stepz=1,2"], ["unknown config key 'train.stepz'", "train.steps"]),
    (["+model=ladder_2", "run_dir=a,b"], ["run_dir names the sweep's folder"]),
    (["+model=ladder_2", "train.steps=[1,2"], ["cannot parse the sweep's overrides"]),
    (["+model=ladder_2", "--nproc", "0"], ["--nproc must be >= 1"]),
])
def test_mistakes_are_one_line_before_anything_runs(args, phrases, tmp_path, capsys):
    result = run_main(main, [*args, f"run_dir={tmp_path / 'sweep'}", "--dry-run"], capsys)
    assert_one_line_error(result, *phrases, prefix="megallm sweep: error: ")
    assert not (tmp_path / "sweep").exists()


def test_dry_run_prints_the_plan_and_the_saving(tmp_path, capsys):
    result = run_main(main, ["+model=ladder_2", "train.steps=100,200", "optim.schedule=wsd",
                             f"run_dir={tmp_path}", *BASE, "--dry-run"], capsys)
    assert result.returncode == 0, result.stderr
    assert "branch at step 80 of train.steps=200" in result.stdout
    assert "saved by WSD branches" in result.stdout
    with pytest.raises(ConfigError):
        plan_sweep(["+model=ladder_2", "train.steps=100", "optim.schedule=sgdr", *BASE])
