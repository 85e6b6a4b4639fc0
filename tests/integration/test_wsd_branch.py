"""WSD cool-down branches: a shorter run branched from a longer run's stable phase equals, bitwise,
the shorter run trained on its own (same LRs, same data order, same weights), the branch point's
checkpoint outlives keep_last, and an extended cosine run says that its LR jumps."""

from __future__ import annotations

import math

import pytest

from tests.helpers import SMALL_MODEL, records, train

pytestmark = pytest.mark.slow

COMMON = [*SMALL_MODEL, "model.num_layers=2", "train.seq_len=64", "train.micro_batch_size=2",
          "train.global_batch_tokens=256", "optim.lr=3e-3", "optim.warmup_steps=2", "optim.schedule=wsd",
          "optim.decay_fraction=0.25", "optim.min_lr_ratio=0", "logging.every=1", "train.eval_every=0",
          "train.eval_batches=2", "data.num_workers=0"]


def test_a_branched_cool_down_equals_the_short_run_trained_alone(small_corpus, tmp_path):
    common = [*COMMON, f"data.path={small_corpus}"]
    # The trunk: 16 steps, decay over its last 4; the 8-step budget's decay starts at step 6.
    trunk = train([*common, f"run_dir={tmp_path / 'trunk'}", "train.steps=16", "checkpoint.every=0",
                   "checkpoint.at_steps=[6]", "checkpoint.keep_last=1"])
    assert trunk.returncode == 0, trunk.stderr[-3000:]
    kept = sorted(p.name for p in (tmp_path / "trunk" / "checkpoints").iterdir())
    assert kept == ["step_00000006", "step_00000016"]  # the branch point outlives keep_last=1

    branch = train([*common, f"run_dir={tmp_path / 'branch'}", "train.steps=8",
                    f"train.resume={tmp_path / 'trunk' / 'checkpoints' / 'step_00000006'}"])
    assert branch.returncode == 0, branch.stderr[-3000:]
    assert "LR schedule differs" not in branch.stdout
    alone = train([*common, f"run_dir={tmp_path / 'alone'}", "train.steps=8"])
    assert alone.returncode == 0, alone.stderr[-3000:]

    trunk_steps, branch_steps, alone_steps = (records(tmp_path / name, "train") for name in ("trunk", "branch", "alone"))
    assert sorted(branch_steps) == [7, 8]
    # Bitwise on any CPU: one layout on one machine, the same kernels in the same order.
    for step in (7, 8):  # the cool-down (from the plateau at step 7 down), equal to the short run's own
        assert branch_steps[step]["lr"] == alone_steps[step]["lr"]
        assert branch_steps[step]["loss"] == alone_steps[step]["loss"]
    assert branch_steps[7]["lr"] == trunk_steps[7]["lr"] == 3e-3 > branch_steps[8]["lr"] > 0
    assert [alone_steps[s]["loss"] for s in range(1, 7)] == [trunk_steps[s]["loss"] for s in range(1, 7)]
    assert (tmp_path / "branch" / "checkpoints" / "step_00000008").is_dir()


def test_extending_a_cosine_run_says_its_lr_jumps(small_corpus, tmp_path):
    common = [*COMMON, f"data.path={small_corpus}", "optim.schedule=cosine", f"run_dir={tmp_path / 'run'}"]
    first = train([*common, "train.steps=6", "train.stop_at_step=4"])
    assert first.returncode == 0, first.stderr[-3000:]
    extended = train([*common, "train.steps=12"])
    assert extended.returncode == 0, extended.stderr[-3000:]
    notes = [line for line in extended.stdout.splitlines() if "LR schedule differs" in line]
    assert len(notes) == 1 and "train.steps 6 -> 12" in notes[0] and "optim.schedule=wsd" in notes[0]
    lrs = records(tmp_path / "run", "train")
    assert lrs[4]["lr"] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi * 1 / 4)))  # 6 steps' cosine
    # The extended run's own 12-step cosine from its first step on (floor 0, 2 warmup steps).
    assert lrs[5]["lr"] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 10)))
