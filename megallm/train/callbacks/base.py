"""Callback: a piece of the training loop that runs at the trainer's named hooks.

As OLMo-core's callbacks: checkpointing, evaluation, metrics and loggers are callbacks,
and a new feature (a NaN guard, preemption signals, another logger) is one more, with
no edit to the loop. The trainer calls, on every rank, in this order:

    on_fit_start(trainer)                     after set-up and resume, before the first step
    for each step:
        pre_step(trainer)                     before the step's batches are read (may set
                                          trainer.skip_batch: read them, train on none)
        post_train_batch(trainer, output)     right after the optimizer step (StepOutput)
        on log steps (trainer.is_log_step):
            collect_metrics(trainer, record)  add entries to the step's "train" record
            log_metrics(trainer, record)      write the record (also for "eval" records)
        post_step(trainer)                    after the step's metrics: evaluate, save, stop
    on_fit_end(trainer)                       after the last step
    on_error(trainer, error)                  instead, when an exception ends the loop (this rank
                                          then fails: no collective, nothing slow)
    close(trainer)                            always, last (try/finally, as OLMo-core's): release
                                          what the callback holds (files flushed and closed,
                                          W&B finished, signal handlers restored, the run
                                          lock); no collective, since a failing rank runs it too

`trainer.state.step` counts the steps done: in `post_train_batch` and later it is the
number of the step that just ran. Every rank runs every hook, so a hook may use
collectives as long as it does so on every rank; callbacks that only write (the
loggers) are installed on rank 0 alone. Callbacks run in descending `priority`, then
in the order given. A callback with state returns it from `state_dict` (JSON-able, the
same on every rank): it is saved with each checkpoint and handed back to
`load_state_dict` when a run resumes from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic

import torch

from megallm.engine.objective import MicroBatchT

if TYPE_CHECKING:  # the trainer imports the callbacks, not the other way round
    from megallm.train.trainer import Trainer

@dataclass
class StepOutput(Generic[MicroBatchT]):
    """What one optimizer step produced on this rank."""

    loss: torch.Tensor  # this replica's mean loss over the step's micro-batches (not synchronised)
    lr: float  # the learning rate the step applied
    # The micro-batches it trained on, as the run's batches yield them: in pretraining, token windows
    # [micro_batch_size, seq_len + 1]; in a fine-tuning, megallm.finetune.batches' rows.
    micro_batches: list[MicroBatchT]
    samples: list[int]  # their global sample indices (megallm.data.order)
    # Whether the optimizer updated the weights: False when the gradient norm was not finite
    # (megallm.engine) or the batch was skipped. The same on every rank; a host-side flag.
    applied: bool = True
    skipped_batch: bool = False  # a callback asked (trainer.skip_batch) not to train on this batch


class Callback:
    priority: int = 0  # higher runs first at every hook

    @property
    def name(self) -> str:
        """The key of this callback's state in a checkpoint."""
        return type(self).__name__

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def pre_step(self, trainer: Trainer) -> None:
        pass

    def post_train_batch(self, trainer: Trainer, output: StepOutput) -> None:
        pass

    def collect_metrics(self, trainer: Trainer, record: dict) -> None:
        pass

    def log_metrics(self, trainer: Trainer, record: dict) -> None:
        pass

    def post_step(self, trainer: Trainer) -> None:
        pass

    def on_fit_end(self, trainer: Trainer) -> None:
        pass

    def on_error(self, trainer: Trainer, error: BaseException) -> None:
        pass

    def close(self, trainer: Trainer) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
