"""An exception that ends the loop leaves nothing that keeps the rank alive: its loader workers
are stopped (they ignore SIGTERM, and Python's exit would wait for them for ever), stop
signals have their default effect again (a failing rank has no step to finish and checkpoint),
and the entry point names the exception in one line.

One real rank (a process of tests.helpers.run_ranks) with two loader workers fails in a
callback after a few steps, as a save to a read-only folder would; an exception raised in a
loader worker reaches the entry point as DataLoader re-raises it, with the worker's traceback
in its message.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import signal
import sys

import pytest
from torch.utils.data._utils import ExceptionWrapper

from megallm.cli import report_failure
from megallm.train.callbacks import Callback
from tests.helpers import SMALL_MODEL, run_ranks

SCHEDULE = ["model.num_layers=1", "train.seq_len=32", "train.micro_batch_size=2", "train.global_batch_tokens=128",
            "train.steps=20", "train.eval_every=0", "checkpoint.every=0", "data.num_workers=2",
            "train.precision=fp32"]


class FailAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def post_step(self, trainer):
        if trainer.state.step == self.step:
            raise PermissionError(13, "Permission denied", "/ckpt/step_00000003.partial")


def _fail_in_a_callback(corpus: str, run_dir: str) -> dict:
    from megallm.config import check_config, compose_config
    from megallm.data.corpus import open_corpus
    from megallm.parallel.distributed import distributed
    from megallm.train.build import build_trainer

    default_sigterm = signal.getsignal(signal.SIGTERM)
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
    return {"step": trainer.state.step, "code": code, "stderr": stderr.getvalue(),
            "workers_alive": [p.pid for p in multiprocessing.active_children()],
            "sigterm_default": signal.getsignal(signal.SIGTERM) == default_sigterm}


@pytest.mark.slow
def test_a_failing_loop_stops_its_workers_and_names_the_error(small_corpus, tmp_path):
    failed = run_ranks(1, _fail_in_a_callback, str(small_corpus), str(tmp_path / "run"))[0]
    assert failed == {"step": 3, "code": 1, "workers_alive": [], "sigterm_default": True,
                      "stderr": "megallm: error: PermissionError: [Errno 13] Permission denied: "
                                "'/ckpt/step_00000003.partial'\n"}


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
