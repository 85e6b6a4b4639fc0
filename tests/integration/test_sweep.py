"""A sweep as users start it, `python launch/pretrain.py --multirun ...`: every run finishes in its
own folder, the WSD branch resumes from its trunk's checkpoint and equals, bitwise, the same budget
trained alone; the same command again skips what finished; a sweep stopped by SIGTERM mid-run
checkpoints it, exits 75 without a traceback, and the same command resumes it (and says so)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, SMALL_MODEL, clean_environment, logged_steps, records, run_pretrain

pytestmark = pytest.mark.slow

SCHEDULE = [*SMALL_MODEL, "model.num_layers=2", "train.seq_len=64", "train.micro_batch_size=2",
            "train.global_batch_tokens=256", "optim.lr=3e-3", "optim.warmup_steps=2", "optim.schedule=wsd",
            "optim.decay_fraction=0.25", "logging.every=1", "train.eval_every=100", "train.eval_batches=2",
            "checkpoint.every=0", "data.num_workers=0"]


def sweep(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "launch" / "pretrain.py"), "--multirun", *args], cwd=REPO,
                            env=clean_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_sweep_trains_branches_skips_finished_runs_and_resumes_a_stopped_one(small_corpus, tmp_path):
    args = [*SCHEDULE, f"data.path={small_corpus}", "train.steps=8,16", f"run_dir={tmp_path / 'sweep'}"]
    first = sweep(args)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    trunk, branch = tmp_path / "sweep" / "train.steps=16", tmp_path / "sweep" / "train.steps=8"
    assert "branch at step 6 of train.steps=16" in out and "resumed from" in (branch / "train.log").read_text()
    assert sorted(records(branch, "train")) == [7, 8] and sorted(records(trunk, "train")) == list(range(1, 17))
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["runs"][1]["branch_step"] == 6
    alone = run_pretrain([*SCHEDULE, f"data.path={small_corpus}", "train.steps=8", f"run_dir={tmp_path / 'alone'}"])
    assert alone.returncode == 0, alone.stderr[-3000:]
    # Bitwise on any CPU: both are one rank on this machine's cores, the same kernels in the same order.
    assert records(branch, "eval")[8]["val_loss"] == records(tmp_path / "alone", "eval")[8]["val_loss"]

    again = sweep(args)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0 and out.count("finished before, skipped") == 2, out[-3000:]

    # Stopped (SIGTERM, as scancel does) while its trunk trains: the run checkpoints and says where it
    # stopped, the sweep exits 75 (resumable, as a preempted run does), and the same command resumes
    # the trunk from there, saying so.
    stopped_args = [*SCHEDULE, f"data.path={small_corpus}", "train.steps=30,40", f"run_dir={tmp_path / 'stopped'}"]
    stopped = sweep(stopped_args)
    trunk = tmp_path / "stopped" / "train.steps=40"
    deadline = time.time() + 300
    while len(logged_steps(trunk)) < 3:
        assert time.time() < deadline and stopped.poll() is None, "the trunk did not start training"
        time.sleep(0.2)
    stopped.send_signal(signal.SIGTERM)
    out, _ = stopped.communicate(timeout=300)
    assert stopped.returncode == 75 and "Traceback" not in out, out[-3000:]
    saved = sorted(p.name for p in (trunk / "checkpoints").iterdir())
    assert len(saved) == 1 and int(saved[0].split("_")[1]) < 40, (saved, out[-3000:])
    stopped_after = f"stopped after step {int(saved[0].split('_')[1])}"
    assert stopped_after in out and stopped_after in (trunk / "train.log").read_text(), out[-3000:]
    assert "train.steps=40: stopped by SIGTERM (exit code 75)" in out and "2 of 2 runs to go (exit code 75)" in out
    resumed = sweep(stopped_args)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    assert f"train.steps=40: 40 steps, resuming from its newest checkpoint, {saved[0]}" in out, out[-3000:]
    assert f"resumed from {trunk / 'checkpoints' / saved[0]}" in out
    assert max(records(trunk, "train")) == 40 and max(records(tmp_path / "stopped" / "train.steps=30", "train")) == 30
