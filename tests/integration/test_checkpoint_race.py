"""Ranks that race over one checkpoint folder, and runs that share one.

- The newest checkpoint of a 2-rank run loses its `megallm_state.json`; on resume rank 0
  is fast and rank 1 lists the checkpoint folder late (after rank 0 may have moved the
  damaged one aside). Every rank must resume from the same checkpoint (step 2), the damaged
  one moved aside once, and the run go on with the uninterrupted run's losses.
- Two runs with different `run_dir`s and one `checkpoint.dir`: while the first trains,
  the second is refused in one line naming the first (it would mix its checkpoints with
  the first's, or save nothing because a step exists already).
"""

from __future__ import annotations

import pathlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megallm.checkpoint.verify import checkpoint_problem
from tests.helpers import REPO, SMALL_MODEL, assert_one_line_error, clean_environment, logged_steps, records, train

pytestmark = pytest.mark.slow

SCHEDULE = ["model.num_layers=2", "train.seq_len=32", "train.micro_batch_size=2", "train.global_batch_tokens=256",
            "train.steps=4", "optim.warmup_steps=2", "optim.lr=3e-3", "logging.every=1", "train.eval_every=0",
            "checkpoint.every=2", "checkpoint.keep_last=0", "data.num_workers=0"]
LATE_LISTING_S = 4.0  # how late rank 1 lists the checkpoint folder


@pytest.fixture(scope="module")
def two_rank_run(small_corpus, tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("race")
    args = [*SMALL_MODEL, *SCHEDULE, f"data.path={small_corpus}"]
    result = train([*args, f"run_dir={root / 'run'}"], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", args


def pretrain_with_a_slow_rank(args: list[str]) -> int:
    """launch/pretrain.py's main, where every rank but 0 lists the checkpoint folder LATE_LISTING_S late,
    and each rank prints the checkpoint it restores."""
    import os

    from megallm.cli.pretrain import main
    from megallm.train.trainer import Trainer

    rank = int(os.environ["RANK"])
    listing, restore = pathlib.Path.iterdir, Trainer.restore

    def late_listing(self):
        if self.name == "checkpoints":
            time.sleep(LATE_LISTING_S)
        return listing(self)

    def announced_restore(self, path):
        print(f"rank {rank} restores {Path(path).name}", flush=True)
        return restore(self, path)

    if rank > 0:
        pathlib.Path.iterdir = late_listing
    Trainer.restore = announced_restore
    return main(args)


def test_ranks_resume_from_one_checkpoint_when_the_newest_lost_its_state_file(two_rank_run, tmp_path):
    run, args = two_rank_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    checkpoints = copy / "checkpoints"
    (checkpoints / "step_00000004" / "megallm_state.json").unlink()
    # On 250f045 the ranks wait in different collectives here: the timeout ends the world.
    result = train([*args, f"run_dir={copy}"], nproc=2, entry=pretrain_with_a_slow_rank, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    restored = sorted(line for line in result.stdout.splitlines() if " restores " in line)
    assert restored == ["rank 0 restores step_00000002", "rank 1 restores step_00000002"], result.stdout
    assert result.stdout.count("moved aside to step_00000004.damaged") == 1, result.stdout
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step_")) == \
        ["step_00000002", "step_00000004", "step_00000004.damaged"]
    assert checkpoint_problem(checkpoints / "step_00000004", distributed=False) is None
    assert records(copy, "train")[4]["loss"] == records(run, "train")[4]["loss"]


def test_second_run_on_the_same_checkpoint_dir_is_refused(small_corpus, tmp_path):
    shared = tmp_path / "shared_checkpoints"
    args = [*SMALL_MODEL, *SCHEDULE, f"data.path={small_corpus}", f"checkpoint.dir={shared}"]
    first = subprocess.Popen([sys.executable, str(REPO / "launch" / "pretrain.py"), *args, "train.steps=100000",
                              "checkpoint.every=0", f"run_dir={tmp_path / 'first'}"],
                             cwd=REPO, env=clean_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 300
        while not logged_steps(tmp_path / "first") and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert first.poll() is None and logged_steps(tmp_path / "first"), first.communicate()[1][-3000:]
        second = train([*args, f"run_dir={tmp_path / 'second'}"])
        assert_one_line_error(second, f"checkpoint.dir {shared} is in use by another run", f"pid {first.pid}")
        assert not (tmp_path / "second" / "metrics.jsonl").exists()
    finally:
        first.send_signal(signal.SIGTERM)  # it saves its step and exits 75 (preemption)
        _, err = first.communicate(timeout=300)
    assert first.returncode == 75, err[-3000:]
    saved = [p for p in shared.iterdir() if p.name.startswith("step_")]
    assert len(saved) == 1 and checkpoint_problem(saved[0], distributed=False) is None
