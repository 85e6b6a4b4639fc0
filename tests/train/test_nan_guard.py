"""The NaN guard: a NaN injected into one step's loss, under each nan_guard.policy.

The injected step's update is never applied, so `skip` and `rollback` (which reloads the
step-2 checkpoint and skips the bad batch when it comes again) train exactly the model of a
healthy run told to skip that batch (nan_guard.skip_steps), and `stop` ends the run with
the step named and the newest checkpoint untouched. metrics.jsonl stays strict JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from megallm.checkpoint.state import check_complete, read_state
from megallm.train.callbacks import Callback
from tests.helpers import SMALL_MODEL, assert_one_line_error, run_ranks, train

pytestmark = pytest.mark.slow

BAD_STEP = 3
SCHEDULE = ["model.num_layers=2", "train.seq_len=32", "train.micro_batch_size=2", "train.global_batch_tokens=128",
            "train.steps=6", "optim.warmup_steps=2", "optim.lr=3e-3", "logging.every=1", "train.eval_every=0",
            "checkpoint.every=2", "checkpoint.keep_last=0", "data.num_workers=0", "train.precision=fp32"]


class InjectNaN(Callback):
    """Makes the loss of step `at` NaN, the first time training reaches it."""

    def __init__(self, at: int):
        self.at, self.hook = at, None

    def pre_step(self, trainer):
        if trainer.state.step + 1 == self.at and self.at > 0:
            module = trainer.engine.engine.module
            self.hook = module.register_forward_hook(lambda _module, _inputs, loss: loss * math.nan)
            self.at = 0

    def post_train_batch(self, trainer, output):
        if self.hook is not None:
            self.hook.remove()
            self.hook = None


class DamageNewestCheckpoint(Callback):
    """Flips 64 bytes of the newest checkpoint's model file during step `at`, before a rollback reads it."""

    def __init__(self, at: int, checkpoints: Path):
        self.at, self.checkpoints = at, checkpoints

    def post_train_batch(self, trainer, output):
        if trainer.state.step == self.at and trainer.ctx.is_main:
            model_file = sorted(self.checkpoints.glob("step_*"))[-1] / "mp_rank_00_model_states.pt"
            data = bytearray(model_file.read_bytes())
            middle = len(data) // 2
            data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
            model_file.write_bytes(bytes(data))


def _fit(corpus: str, run_dir: str, inject_at: int, overrides: list[str], damage_at: int = 0) -> dict:
    from megallm.config import check_config, compose_config
    from megallm.data.corpus import open_corpus
    from megallm.errors import MegallmError
    from megallm.parallel.distributed import distributed
    from megallm.train.build import build_trainer

    cfg, config_yaml = compose_config([*SMALL_MODEL, *SCHEDULE, f"data.path={corpus}", f"run_dir={run_dir}",
                                       *overrides])
    check_config(cfg, 1)
    data = open_corpus(cfg.data.path, None, ("train", "val"))
    cfg.model.vocab_size = data.manifest.vocab_size
    with distributed() as ctx:
        try:
            extra = [InjectNaN(inject_at)] + ([DamageNewestCheckpoint(damage_at, Path(run_dir) / "checkpoints")]
                                              if damage_at else [])
            build_trainer(cfg, config_yaml, data, ctx, extra_callbacks=extra).fit()
        except MegallmError as error:
            return {"error": str(error), "exit_code": error.exit_code}
    return {"error": None}


def strict_records(run_dir: Path) -> list[dict]:
    def refuse(constant):
        raise AssertionError(f"metrics.jsonl holds {constant}, which is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    """The last train record of each step (a rollback logs the replayed steps again)."""
    return {r["step"]: r["loss"] for r in strict_records(run_dir) if r["kind"] == "train"}


def test_each_policy_with_a_nan_in_one_batch(small_corpus, tmp_path):
    runs = {"reference": (0, [f"nan_guard.skip_steps=[{BAD_STEP}]"]),
            "skip": (BAD_STEP, ["nan_guard.policy=skip"]),
            "rollback": (BAD_STEP, ["nan_guard.policy=rollback"]),
            "stop": (BAD_STEP, [])}  # the default policy
    results = {name: run_ranks(1, _fit, str(small_corpus), str(tmp_path / name), at, extra)[0]
               for name, (at, extra) in runs.items()}
    reference = losses(tmp_path / "reference")
    assert sorted(reference) == list(range(1, 7)) and reference[BAD_STEP] is None  # nothing trained at step 3
    for name in ("skip", "rollback"):
        assert results[name]["error"] is None, results[name]
        # bitwise: the bad update was never applied (one layout on one machine: the same kernels in the same order)
        assert losses(tmp_path / name) == reference, name
        events = [r for r in strict_records(tmp_path / name) if r["kind"] == "nonfinite"]
        assert [(e["step"], e["grad_norm"], e["samples"]) for e in events] == [(BAD_STEP, None, [8, 12])]
        assert (tmp_path / name / "checkpoints" / "step_00000006").is_dir()
    guard_state = json.loads((tmp_path / "rollback" / "checkpoints" / "step_00000006" / "megallm_state.json")
                             .read_text())["callbacks"]["NanGuard"]
    assert guard_state == {"events": 1, "rolled_back_steps": [BAD_STEP]}

    stop = results["stop"]
    assert stop["exit_code"] == 3 and stop["error"].startswith(f"step {BAD_STEP}: the gradient norm is not finite")
    assert "step_00000002 is intact" in stop["error"] and f"nan_guard.skip_steps=[{BAD_STEP}]" in stop["error"]
    stopped = tmp_path / "stop"
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["step_00000002"]
    check_complete(stopped / "checkpoints" / "step_00000002", read_state(stopped / "checkpoints" / "step_00000002"))
    assert losses(stopped) == {1: reference[1], 2: reference[2]}


def test_divergence_stops_with_one_line_and_finite_checkpoints(small_corpus, tmp_path):
    """The issue's case: optim.lr=1e6 drives the gradient norm to NaN within a few steps."""
    result = train([*SMALL_MODEL, *SCHEDULE, "optim.lr=1e6", "checkpoint.every=1", f"data.path={small_corpus}",
                    f"run_dir={tmp_path}/run"])
    line = assert_one_line_error(result, "the gradient norm is not finite", "nan_guard.policy=stop", returncode=3)
    records = strict_records(tmp_path / "run")
    bad = [r["step"] for r in records if r["kind"] == "nonfinite"]
    assert len(bad) == 1 and f"step {bad[0]}:" in line
    saved = sorted((tmp_path / "run" / "checkpoints").glob("*/*model_states.pt"))
    assert saved
    for path in saved:  # every published checkpoint holds finite weights
        weights = torch.load(path, map_location="cpu", weights_only=False)["module"]
        assert all(torch.isfinite(w).all() for w in weights.values() if isinstance(w, torch.Tensor)), path


def test_rollback_skips_a_damaged_newest_checkpoint(small_corpus, tmp_path):
    """A NaN at step 5 while the newest checkpoint (step 4) has been damaged on disk: the rollback
    verifies it as a resume would, moves it aside, goes back to step 2 and trains on; the steps
    replayed from there give the same losses as a run that skipped step 5 from the start."""
    reference = run_ranks(1, _fit, str(small_corpus), str(tmp_path / "reference"), 0, ["nan_guard.skip_steps=[5]"])
    result = run_ranks(1, _fit, str(small_corpus), str(tmp_path / "run"), 5, ["nan_guard.policy=rollback"], 5)
    assert reference[0]["error"] is None and result[0]["error"] is None, result
    assert losses(tmp_path / "run") == losses(tmp_path / "reference")  # bitwise
    checkpoints = tmp_path / "run" / "checkpoints"
    # the damaged one moved aside (step 4 was saved again after the replay), the rollback went to step 2
    assert (checkpoints / "step_00000004.damaged").is_dir() and (checkpoints / "step_00000004").is_dir()
    train_steps = [r["step"] for r in strict_records(tmp_path / "run") if r["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 3, 4, 5, 6]  # step 5's batch skipped the second time
