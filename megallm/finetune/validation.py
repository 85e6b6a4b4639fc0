"""Held-out scores of a fine-tuning, every train.eval_every steps and at the last: an "eval" record.

- classification: accuracy and macro-F1 (megallm.evaluation.metrics: scikit-learn's) of the
  argmax of the pooled class logits, and the cross-entropy, over every validation row once;
  the majority-class baseline's accuracy and macro-F1 beside them (the share of the most
  common validation label; what a model that learned nothing scores).
- supervised pairs: the loss over the validation windows' response tokens.

Rank r of dp data-parallel ranks scores rows r, r + dp, ...; its last micro-batch is filled
up with copies that count for nothing (a classification row's copy is dropped, a window's
copy has no scored token), so every rank runs the same number of full micro-batches.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megallm.evaluation.metrics import accuracy, macro_f1
from megallm.finetune.batches import Encoded
from megallm.parallel.distributed import DistContext
from megallm.train.callbacks.base import Callback

if TYPE_CHECKING:  # the trainer imports the callbacks, not the other way round
    from megallm.train.trainer import Trainer


def rank_micro_batches(encoded: Encoded, make: Callable, mbs: int, dp_rank: int, dp: int, device: torch.device,
                       filler: Callable[[dict, np.ndarray], dict]) -> tuple[list, np.ndarray]:
    """This rank's validation micro-batches and, per row, its index in `encoded` (-1: a filler copy)."""
    rows = np.arange(dp_rank, encoded.rows, dp)
    per_rank = -(-encoded.rows // dp)
    count = -(-per_rank // mbs) * mbs  # every rank: the same number of full micro-batches
    index = np.concatenate([rows, np.full(count - len(rows), -1)])
    batches = []
    for start in range(0, count, mbs):
        chosen = index[start:start + mbs]
        arrays = {key: array[np.where(chosen >= 0, chosen, 0)] for key, array in encoded.arrays.items()}
        batches.append(make(filler(arrays, chosen < 0), device))
    return batches, index


def _no_filler(arrays: dict, copies: np.ndarray) -> dict:
    return arrays


def _unscored_copies(arrays: dict, copies: np.ndarray) -> dict:
    windows = arrays["windows"].copy()
    windows[copies, 1] = 0  # a copy's tokens are not scored
    return {"windows": windows}


class ClassificationValidation(Callback):
    priority = 10  # before a checkpoint of the same step is saved

    def __init__(self, encoded: Encoded, make: Callable, names: Sequence[str], every: int, mbs: int,
                 ctx: DistContext):
        self.every, self.names = every, list(names)
        self.labels = encoded.arrays["labels"]
        self.batches, self.index = rank_micro_batches(encoded, make, mbs, ctx.coords.dp, ctx.dims.dp, ctx.device,
                                                      _no_filler)
        majority = Counter(self.labels.tolist()).most_common(1)[0][0]
        self.baseline = {"val_majority_accuracy": accuracy([majority] * len(self.labels), self.labels),
                         "val_majority_macro_f1": macro_f1([majority] * len(self.labels), self.labels,
                                                           labels=list(range(len(names))))}

    def post_step(self, trainer: Trainer) -> None:
        step = trainer.state.step
        if not self.every or (step % self.every and step != trainer.last_step):
            return
        logits = trainer.engine.predict(self.batches).float().cpu()  # [rows of this rank incl. copies, classes]
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, (self.index, logits))
        if not trainer.ctx.is_main:
            return
        scores = torch.zeros(len(self.labels), len(self.names))
        for index, part in everyone:  # tensor- and pipeline-parallel ranks of a replica repeat its rows
            real = index >= 0
            scores[torch.from_numpy(index[real])] = part[torch.from_numpy(real)]
        predicted = scores.argmax(dim=1).numpy()
        loss = F.cross_entropy(scores, torch.from_numpy(self.labels)).item()
        trainer.log({"kind": "eval", "step": step, "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
                     "val_accuracy": accuracy(predicted, self.labels),
                     "val_macro_f1": macro_f1(predicted, self.labels, labels=list(range(len(self.names)))),
                     "val_examples": len(self.labels), **self.baseline, "tokens_seen": trainer.state.tokens_seen})


class SupervisedValidation(Callback):
    priority = 10

    def __init__(self, encoded: Encoded, make: Callable, every: int, mbs: int, ctx: DistContext):
        self.every = every
        self.batches, _ = rank_micro_batches(encoded, make, mbs, ctx.coords.dp, ctx.dims.dp, ctx.device,
                                             _unscored_copies)
        self.windows = encoded.rows

    def post_step(self, trainer: Trainer) -> None:
        step = trainer.state.step
        if not self.every or (step % self.every and step != trainer.last_step):
            return
        loss = trainer.engine.eval_loss(self.batches)
        trainer.log({"kind": "eval", "step": step, "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
                     "val_windows": self.windows, "tokens_seen": trainer.state.tokens_seen})
