"""Preemption: SIGTERM or SIGUSR1 ends the run with a checkpoint and exit code 75.

Schedulers warn a job before they stop it: SLURM sends SIGTERM when it preempts or
cancels (SIGKILL follows after its KillWait, 30 s by default) and, with
`--signal=USR1@SECONDS`, SIGUSR1 that long before the time limit. On either signal
every rank finishes the step it is in, and the ranks agree to stop: each step
all-reduces the ranks' flags (MAX) over a gloo group of this callback's own, started
before the step's compute and read after it, so the loop neither waits for it nor
synchronises a GPU. The trainer then stops after that step, which the Checkpointer
saves, and the process exits with PREEMPTED_EXIT_CODE (75, EX_TEMPFAIL), which
launch/slurm/pretrain.sbatch turns into a requeue; the requeued job resumes from the
checkpoint (train.resume=auto). A signal during set-up, before the first step, has its
default effect (nothing to save yet), and so has one after an exception ended the loop: a
failing rank has no step to finish, and a SIGTERM from torchrun (another rank failed) or
from the kernel (torchrun is gone, megallm.parallel.lifetime) must end it, not be kept
for a checkpoint that will never come.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Optional

import torch
import torch.distributed as dist

from megallm.train.callbacks.base import Callback, StepOutput

if TYPE_CHECKING:  # the trainer imports the callbacks, not the other way round
    from megallm.train.trainer import Trainer

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped on a signal after a checkpoint; run it again to resume


class PreemptionHandler(Callback):
    priority = 50  # post_train_batch before the metrics: the stopping step is logged

    def __init__(self):
        self.received = 0  # the last stop signal this process received (0: none)
        self._previous: dict = {}
        self._group = None
        self._pending: Optional[tuple] = None  # (all-reduce work, flag tensor) of the current step

    def _on_signal(self, signum, _frame) -> None:
        self.received = signum  # only a flag: the loop acts on it between steps

    def on_fit_start(self, trainer: Trainer) -> None:
        self._group = dist.new_group(backend="gloo")  # collective: every rank creates it
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def pre_step(self, trainer: Trainer) -> None:
        flag = torch.tensor([float(self.received)])
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag)

    def post_train_batch(self, trainer: Trainer, output: StepOutput) -> None:
        assert self._pending is not None, "pre_step started this step's all-reduce"
        work, flag = self._pending
        work.wait()
        self._pending = None
        if flag.item():
            name = signal.Signals(int(flag.item())).name
            trainer.request_stop(f"{name} received; saving a checkpoint and exiting with code "
                                 f"{PREEMPTED_EXIT_CODE} so that the job is requeued", exit_code=PREEMPTED_EXIT_CODE)

    def close(self, trainer: Trainer) -> None:
        """The handlers found at on_fit_start, back (after the last step, or an exception)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
