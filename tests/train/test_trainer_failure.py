"""An exception that ends the loop leaves nothing behind (Trainer.fit's on_error and close hooks):
its loader workers are stopped (they ignore SIGTERM, and Python's exit would wait for them for
ever), stop signals have their default effect again (a failing rank has no step to finish and
checkpoint), the run lock is released (the requeued job may take the folder), metrics.jsonl
holds every record logged before the error, W&B is finished as failed with the error in its
summary, and the entry point names the exception in one line.

One real rank (a process of tests.helpers.run_ranks) with two loader workers and W&B offline
fails inside its third step, as a save to a read-only folder would; an exception raised in a
loader worker reaches the entry point as DataLoader re-raises it, with the worker's traceback
in its message.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import pytest
from torch.utils.data._utils import ExceptionWrapper

from megallm.cli import report_failure
from megallm.run_layout import LOCK_FILE
from megallm.train.callbacks import Callback
from tests.helpers import SMALL_MODEL, run_ranks
from tests.wandb_offline import offline_runs

SCHEDULE = ["model.num_layers=1", "train.seq_len=32", "train.micro_batch_size=2", "train.global_batch_tokens=128",
            "train.steps=20", "train.eval_every=0", "checkpoint.every=0", "data.num_workers=2",
            "train.precision=fp32", "logging.every=1", "logging.wandb.enabled=true", "logging.wandb.mode=offline"]


class FailAt(Callback):
    """Raises inside step `step`: after its optimizer step, before its metrics are logged."""

    def __init__(self, step: int):
        self.step = step

    def post_train_batch(self, trainer, output):
        if trainer.state.step == self.step:
            raise PermissionError(13, "Permission denied", "/ckpt/step_00000003.partial")


def lock_is_free(folder: Path) -> bool:
    """Whether another process could take the run folder's lock now (a non-blocking flock)."""
    fd = os.open(folder / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _fail_in_a_callback(corpus: str, run_dir: str) -> dict:
    for name in ("CACHE", "CONFIG", "DATA", "ARTIFACT"):  # W&B's own files below the test's folder
        os.environ[f"WANDB_{name}_DIR"] = f"{run_dir}.wandb_{name.lower()}"
    from megallm.config import check_config, compose_config
    from megallm.data.corpus import open_corpus
    from megallm.parallel.distributed import distributed
    from megallm.train.build import build_trainer

    handlers = [signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)]
    cfg, config_yaml = compose_config([*SMALL_MODEL, *SCHEDULE, f"data.path={corpus}", f"run_dir={run_dir}"])
    check_config(cfg, 1)
    data = open_corpus(cfg.data.path, None, ("train", "val"))
    cfg.model.vocab_size = data.manifest.vocab_size
    stderr = io.StringIO()
    with distributed() as ctx:
        trainer = build_trainer(cfg, config_yaml, data, ctx, extra_callbacks=[FailAt(3)])
        try:
            trainer.fit()
        except PermissionError as error:
            with contextlib.redirect_stderr(stderr):
                code = report_failure("megallm", error)
        lock_free = lock_is_free(Path(run_dir))  # while this process, which held it, lives on
    return {"step": trainer.state.step, "code": code, "stderr": stderr.getvalue(),
            "workers_alive": [p.pid for p in multiprocessing.active_children()],
            "signals_restored": [signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)] == handlers,
            "lock_free": lock_free}


@pytest.mark.slow
def test_a_failing_loop_stops_its_workers_and_names_the_error(small_corpus, tmp_path):
    failed = run_ranks(1, _fail_in_a_callback, str(small_corpus), str(tmp_path / "run"))[0]
    error = "PermissionError: [Errno 13] Permission denied: '/ckpt/step_00000003.partial'"
    assert failed == {"step": 3, "code": 1, "workers_alive": [], "signals_restored": True, "lock_free": True,
                      "stderr": f"megallm: error: {error}\n"}
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["kind"] == "train"] == [1, 2]  # step 3 failed before its metrics
    (wandb_run,) = offline_runs(tmp_path / "run")
    assert (wandb_run.exit_code, wandb_run.summary["error"]) == (1, error)
    assert [row["step"] for row in wandb_run.rows_with("train/loss")] == [1, 2]


def test_an_exception_from_a_loader_worker_is_one_line(capsys):
    try:
        {}["shard"]
    except KeyError:
        wrapped = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 1")
    try:
        wrapped.reraise()  # what DataLoader does with a worker's exception
    except KeyError as error:
        assert report_failure("megallm", error) == 1
    assert capsys.readouterr().err == ("megallm: error: KeyError: Caught KeyError in DataLoader worker process 1. "
                                       "KeyError: 'shard'\n")
