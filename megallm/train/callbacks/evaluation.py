"""Held-out evaluation every `every` steps and at the last step: an "eval" record."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from megallm.data.loader import EvalBatches
from megallm.train.callbacks.base import Callback
from megallm.train.callbacks.metrics import flops_seen

if TYPE_CHECKING:  # the trainer imports the callbacks, not the other way round
    from megallm.train.trainer import Trainer


class Evaluator(Callback):
    """Mean loss over `batches` micro-batches (rounded up to a multiple of the data-parallel
    ranks) of the validation split: the same sequences for every layout, so val_loss
    compares across runs. The record holds the tokens seen and training FLOPs so far, to plot
    val_loss against compute."""

    priority = 10  # before a checkpoint of the same step is saved

    def __init__(self, val_batches: EvalBatches, every: int, batches: int, flops_per_token: int):
        self.val_batches, self.every, self.batches = val_batches, every, batches
        self.flops_per_token = flops_per_token

    def post_step(self, trainer: Trainer) -> None:
        step = trainer.state.step
        if not self.every or (step % self.every and step != trainer.last_step):
            return
        per_rank = -(-self.batches // trainer.engine.dims.dp)
        val_loss = trainer.engine.eval_loss([self.val_batches.micro_batch(i) for i in range(per_rank)],
                                            samples=[self.val_batches.samples(i) for i in range(per_rank)])
        tokens = trainer.state.tokens_seen
        trainer.log({"kind": "eval", "step": step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0)),
                     "tokens_seen": tokens, "flops_seen": flops_seen(tokens, self.flops_per_token)})
