"""Fine-tuning micro-batches -> the model's inputs and targets (the engine's objective,
as megallm.engine.objective.Objective is pretraining's).

- ClassifyObjective: a row's tokens with its padding as a segment of its own (document ids
  0 for the text, 1 for the padding), so neither a decoder nor an encoder reads the padding;
  targets are the class ids and the pooling weights over the text (model.pooling).
- SupervisedObjective: packed windows [b, 2, seq_len + 1] of token ids and response flags;
  next-token labels, scored where the label is a response token (or the final eos). The
  prompt's tokens are inputs only: they get no loss, so no gradient of their own. With
  document masking each packed example attends only within itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from megallm.engine.objective import ModelInputs
from megallm.finetune.batches import ClassifyBatch
from megallm.model.loss import ClassTargets, Targets, pooling_weights
from megallm.model.packing import document_ids


@dataclass(frozen=True)
class ClassifyObjective:
    pooling: str  # last, mean or first (megallm.model.loss.pooling_weights)

    def inputs(self, batch: ClassifyBatch, samples: Optional[Sequence[int]] = None) -> ModelInputs:
        seq_len = batch.tokens.shape[1]
        positions = torch.arange(seq_len, device=batch.tokens.device)[None]
        padding = (positions >= batch.lengths[:, None]).long()  # [b, s]: 0 text, 1 padding
        weights = pooling_weights(batch.lengths, seq_len, self.pooling)
        return ModelInputs(batch.tokens, padding, ClassTargets(batch.labels, weights))


@dataclass(frozen=True)
class SupervisedObjective:
    segment_start_id: Optional[int]  # None: no document masking

    def inputs(self, windows: torch.Tensor, samples: Optional[Sequence[int]] = None) -> ModelInputs:
        tokens, labels = windows[:, 0, :-1], windows[:, 0, 1:]
        scored = windows[:, 1, 1:].bool()
        doc_ids = None if self.segment_start_id is None else document_ids(tokens, self.segment_start_id)
        return ModelInputs(tokens, doc_ids, Targets(labels, scored))
