"""Stop signals: SIGTERM / SIGUSR1 mid-run give a checkpoint at the signal and exit code 75,
and the resumed run trains exactly the uninterrupted one; a killed torchrun takes its ranks
and their loader workers along (they checkpoint first), leaving no process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from megallm.checkpoint.state import check_complete, read_state
from megallm.train.callbacks import PREEMPTED_EXIT_CODE, Callback
from tests.helpers import REPO, SMALL_MODEL, alive, clean_environment, descendants, logged_steps, records, run_ranks

pytestmark = pytest.mark.slow

STEPS = 8
SCHEDULE = ["model.num_layers=2", "train.seq_len=32", "train.micro_batch_size=2", "train.global_batch_tokens=256",
            f"train.steps={STEPS}", "optim.warmup_steps=2", "optim.lr=3e-3", "logging.every=1", "train.eval_every=0",
            "checkpoint.every=0", "data.num_workers=1", "train.precision=fp32"]


class SignalAt(Callback):
    """Rank `rank` sends itself `sig` in the middle of step `step` (after its batches are read)."""

    def __init__(self, step: int, rank: int, sig: int):
        self.step, self.rank, self.sig = step, rank, sig

    def post_train_batch(self, trainer, output):
        if trainer.state.step == self.step and trainer.ctx.rank == self.rank:
            os.kill(os.getpid(), self.sig)


def _fit(corpus: str, run_dir: str, signal_at: int) -> int:
    from megallm.config import check_config, compose_config
    from megallm.data.corpus import open_corpus
    from megallm.parallel.distributed import distributed
    from megallm.train.build import build_trainer

    cfg, config_yaml = compose_config([*SMALL_MODEL, *SCHEDULE, f"data.path={corpus}", f"run_dir={run_dir}"])
    check_config(cfg, 2)
    data = open_corpus(cfg.data.path, None, ("train", "val"))
    cfg.model.vocab_size = data.manifest.vocab_size
    extra = [SignalAt(signal_at, rank=1, sig=signal.SIGUSR1)] if signal_at else []
    with distributed() as ctx:
        trainer = build_trainer(cfg, config_yaml, data, ctx, extra_callbacks=extra)
        trainer.fit()
    return trainer.exit_code


def test_signal_on_one_rank_stops_all_with_a_checkpoint_and_resumes_exactly(small_corpus, tmp_path):
    reference = run_ranks(2, _fit, str(small_corpus), str(tmp_path / "reference"), 0)
    stopped = run_ranks(2, _fit, str(small_corpus), str(tmp_path / "run"), 3)
    # The flag of step 3 is all-reduced during step 4: both ranks stop after step 4, which is saved.
    assert reference == [0, 0] and stopped == [PREEMPTED_EXIT_CODE] * 2
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step_00000004"]
    assert sorted(records(tmp_path / "run", "train")) == [1, 2, 3, 4]
    assert run_ranks(2, _fit, str(small_corpus), str(tmp_path / "run"), 0) == [0, 0]
    losses, expected = records(tmp_path / "run", "train"), records(tmp_path / "reference", "train")
    # Bitwise on any CPU: the same 2 ranks on this machine run the same kernels in the same order on both sides.
    assert {s: r["loss"] for s, r in losses.items()} == {s: r["loss"] for s, r in expected.items()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_signalled_torchrun_leaves_no_process_and_a_checkpoint(small_corpus, tmp_path, sig):
    """SIGUSR1 kills torchrun (it does not handle it): its ranks, in sessions of their own, get
    SIGTERM from the kernel. SIGTERM torchrun handles: it passes SIGTERM on to its ranks. Either
    way the ranks checkpoint the step they are in and exit with their loader workers."""
    run_dir = tmp_path / "run"
    args = [*SMALL_MODEL, *SCHEDULE, "train.steps=400", f"data.path={small_corpus}", f"run_dir={run_dir}"]
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 str(REPO / "launch" / "pretrain.py"), *args], cwd=REPO, env=clean_environment(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while 2 not in logged_steps(run_dir):
        assert launcher.poll() is None and time.time() < deadline, launcher.stdout.read()[-3000:]
        time.sleep(0.2)
    ranks_and_workers = descendants(launcher.pid)
    assert len(ranks_and_workers) >= 4  # 2 ranks, each with a loader worker
    launcher.send_signal(sig)
    output = launcher.communicate(timeout=120)[0]
    deadline = time.time() + 120
    while any(map(alive, ranks_and_workers)) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(map(alive, ranks_and_workers)), output[-3000:]
    last = max(records(run_dir, "train"))
    assert last < 400 and f"stopped after step {last}: SIGTERM received" in output, output[-3000:]
    saved = run_dir / "checkpoints" / f"step_{last:08d}"
    check_complete(saved, read_state(saved))
    assert read_state(saved).step == last
