"""Held-out evaluation every `every` steps and at the last step: an "eval" record.

For a mixture of sources (data.sources), each source's validation split is scored on its own
(`<source>/loss`, W&B `eval/<source>/loss`) and val_loss is their mean weighted by the mixture's
weights; a source of weight 0 is scored too (a held-out domain) and weighs nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

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

    def __init__(self, val_batches: EvalBatches | dict[str, EvalBatches], every: int, batches: int,
                 flops_per_token: int, weights: Optional[dict[str, float]] = None):
        self.val_batches = val_batches if isinstance(val_batches, dict) else {"": val_batches}
        self.weights = weights or {name: 1.0 for name in self.val_batches}
        self.every, self.batches, self.flops_per_token = every, batches, flops_per_token

    def post_step(self, trainer: Trainer) -> None:
        step = trainer.state.step
        if not self.every or (step % self.every and step != trainer.last_step):
            return
        per_rank = -(-self.batches // trainer.engine.dims.dp)
        losses = {name: trainer.engine.eval_loss([batches.micro_batch(i) for i in range(per_rank)],
                                                 samples=[batches.samples(i) for i in range(per_rank)])
                  for name, batches in self.val_batches.items()}
        if len(losses) == 1:
            (val_loss,), per_source = losses.values(), {}
        else:
            total = sum(self.weights.values())
            val_loss = sum(self.weights[name] * loss for name, loss in losses.items()) / total
            per_source = {f"{name}/loss": loss for name, loss in losses.items()}
        tokens = trainer.state.tokens_seen
        trainer.log({"kind": "eval", "step": step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0)),
                     **per_source, "tokens_seen": tokens, "flops_seen": flops_seen(tokens, self.flops_per_token)})
