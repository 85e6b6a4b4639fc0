"""W&B logging read back from what wandb 0.31 writes offline: the config as dotted keys with
parameter and FLOP counts, rows against step, tokens seen and training FLOPs with no None in
them, one W&B run across a stop and resume, and the mode from config, then environment.

W&B's offline folder (`<run_dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb`) holds no
config.yaml or summary file, only the protobuf records that `wandb sync` uploads; they are
read as W&B writes them (tests/wandb_offline.py). Each training job runs on one rank of
tests.helpers.run_ranks, with its W&B environment (W&B's folders in the test's, no WANDB_* of
the caller).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from megallm.cli.pretrain import main
from tests.helpers import SMALL_MODEL, assert_one_line_error, records, run_main, run_ranks
from tests.wandb_offline import offline_runs

# 6 steps of 2 x 64-token sequences on one rank; a checkpoint and an evaluation every 3 steps.
SCHEDULE = ["model.num_layers=2", "train.seq_len=64", "train.micro_batch_size=2", "train.global_batch_tokens=128",
            "train.steps=6", "optim.lr=3e-3", "optim.warmup_steps=2", "logging.every=1", "train.eval_every=3",
            "train.eval_batches=1", "checkpoint.every=3", "data.num_workers=0", "train.precision=fp32"]
TOKENS_PER_STEP = 128
STOP = 3


def _pretrain(env: dict, argv: list[str]) -> int:
    """launch/pretrain.py's `main(argv)` in a rank whose W&B variables are those of `env` alone."""
    for name in [n for n in os.environ if n.startswith("WANDB_")]:
        del os.environ[name]
    os.environ.update(env)
    return main(argv)


def pretrain(tmp: Path, argv: list[str], **wandb_env: str) -> None:
    """A training job whose W&B files all go below `tmp` (not HOME itself: DeepSpeed's compiled shm
    op is cached under HOME, and rebuilding it costs a minute)."""
    env = {f"WANDB_{name}_DIR": str(tmp / f"wandb_{name.lower()}") for name in ("CACHE", "CONFIG", "DATA", "ARTIFACT")}
    env = {**env, "WANDB_DIR": str(tmp / "wandb_dir"), **wandb_env}
    assert run_ranks(1, _pretrain, env, argv, timeout=300) == [0]


# ---- a run stopped at step 3 and resumed to step 6 -------------------------------------------------
@pytest.fixture(scope="module")
def resumed(small_corpus, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wandb")
    argv = [*SMALL_MODEL, *SCHEDULE, f"data.path={small_corpus}", f"run_dir={tmp / 'run'}",
            "logging.wandb.enabled=true"]
    pretrain(tmp, [*argv, f"train.stop_at_step={STOP}"])
    pretrain(tmp, argv)  # train.resume=auto: from the step-3 checkpoint
    return tmp / "run"


@pytest.mark.slow
def test_config_and_rows_against_step_tokens_and_flops(resumed):
    from megallm.config import config_from_yaml
    from megallm.model.flops import flops_per_token, parameter_count

    first, _ = offline_runs(resumed)
    cfg, _ = config_from_yaml((resumed / "config.yaml").read_text())
    per_token = flops_per_token(cfg.model, cfg.train.seq_len)
    assert first.name == "run" and first.project == "megallm"  # defaults: the run folder's name, megallm
    config = first.config
    assert config["optim.lr"] == 3e-3 and config["model.hidden_size"] == 64 and config["train.steps"] == 6
    assert config["params.total"] == parameter_count(cfg.model).total
    assert config["params.non_embedding"] == parameter_count(cfg.model).non_embedding
    assert config["flops_per_token"] == per_token
    assert (config["layout.world_size"], config["layout.dp"], config["layout.tp"], config["layout.pp"]) == (1, 1, 1, 1)
    assert config["precision"] == "fp32"

    train = first.rows_with("train/loss")
    assert [row["step"] for row in train] == [1, 2, 3]
    for row in train:
        assert row["tokens_seen"] == row["step"] * TOKENS_PER_STEP
        assert row["flops_seen"] == row["tokens_seen"] * per_token
        assert "train/mfu" not in row  # None on CPU (no known peak): left out
    (evaluation,) = first.rows_with("eval/val_loss")
    assert evaluation["step"] == STOP and evaluation["flops_seen"] == STOP * TOKENS_PER_STEP * per_token
    assert all(value is not None for row in first.rows for value in row.values())
    steps_against = {m.glob_name: m.step_metric for m in first.metrics if m.glob_name}
    assert steps_against == {"train/*": "step", "eval/*": "step"}
    assert {m.name for m in first.metrics if m.name} >= {"step", "tokens_seen", "flops_seen"}

    # the JSONL records carry the same counts (MFU there as null)
    jsonl = records(resumed, "train")
    assert jsonl[6]["flops_seen"] == 6 * TOKENS_PER_STEP * per_token and jsonl[6]["mfu"] is None
    assert records(resumed, "eval")[6]["tokens_seen"] == 6 * TOKENS_PER_STEP


@pytest.mark.slow
def test_resumed_job_continues_the_same_run(resumed):
    # wandb 0.31 offline: each job writes its own offline-run-<time>-<id> folder, with the same id
    first, second = offline_runs(resumed)
    run_id = (resumed / "wandb_run_id").read_text().strip()
    assert first.run_id == second.run_id == run_id
    assert [folder.name.endswith(f"-{run_id}") for folder in (resumed / "wandb").glob("offline-run-*")] == [True] * 2
    train = second.rows_with("train/loss")
    assert [row["step"] for row in train] == [4, 5, 6]  # after the checkpoint of step 3, in order
    assert [row["tokens_seen"] for row in train] == [s * TOKENS_PER_STEP for s in (4, 5, 6)]  # from the checkpoint
    # W&B's own row counter starts again at 0 in the second folder: why rows plot against `step`
    assert [row["_step"] for row in second.rows][:1] == [0]
    assert first.config["train.stop_at_step"] == STOP and second.config["train.stop_at_step"] == 0


# ---- the mode: config, then environment, then offline ---------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode_in_config,written", [(None, False), ("offline", True)])
def test_wandb_mode_in_environment_and_config(mode_in_config, written, small_corpus, tmp_path):
    argv = [*SMALL_MODEL, *SCHEDULE, "train.steps=1", "train.eval_every=0", "checkpoint.every=0",
            f"data.path={small_corpus}", f"run_dir={tmp_path / 'run'}", "logging.wandb.enabled=true"]
    mode = [f"logging.wandb.mode={mode_in_config}"] if mode_in_config else []
    pretrain(tmp_path, [*argv, "logging.wandb.group=study", *mode], WANDB_MODE="disabled", WANDB_TAGS="ladder,wsd")
    assert (tmp_path / "run" / "wandb").exists() == written
    assert (tmp_path / "run" / "wandb_run_id").exists() == written
    if written:  # the group from the config, the tags from the environment
        (run,) = offline_runs(tmp_path / "run")
        assert (run.group, run.tags) == ("study", ["ladder", "wsd"])


def test_mode_precedence():
    from megallm.config import WandbConfig

    env = {"WANDB_MODE": "online", "WANDB_PROJECT": "scaling", "WANDB_RUN_GROUP": "sweep", "WANDB_TAGS": "a, b"}
    assert WandbConfig().resolved({}) == WandbConfig(mode="offline", project="megallm")
    from_env = WandbConfig().resolved(env)
    assert (from_env.mode, from_env.project, from_env.group) == ("online", "scaling", "sweep")
    assert from_env.tags == ["a", "b"]
    own = WandbConfig(mode="offline", project="mine", group="g", tags=["t"]).resolved(env)
    assert (own.mode, own.project, own.group, own.tags) == ("offline", "mine", "g", ["t"])
    assert WandbConfig().resolved({"WANDB_MODE": "dryrun"}).mode == "offline"  # W&B's legacy name


@pytest.mark.parametrize("args,env,phrases", [
    (["logging.wandb.mode=onilne"], {}, ["logging.wandb.mode must be offline, online or disabled, got 'onilne'"]),
    (["logging.wandb.enabled=true"], {"WANDB_MODE": "shared"}, ["WANDB_MODE must be offline, online or disabled",
                                                                 "got 'shared'"]),
])
def test_bad_mode_is_one_line(args, env, phrases, tmp_path, capsys, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_main(main, ["+model=tiny", *args, f"run_dir={tmp_path}/run"], capsys)
    assert_one_line_error(result, *phrases)


def test_bad_environment_mode_without_wandb_is_no_error(monkeypatch):
    from megallm.config import check_config, compose_config

    monkeypatch.setenv("WANDB_MODE", "shared")
    cfg, _ = compose_config(["+model=tiny"])
    check_config(cfg, 1)  # W&B not enabled: its environment does not matter
