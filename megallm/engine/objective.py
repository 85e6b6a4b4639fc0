"""What a run trains the model to predict: token windows -> the model's inputs and targets.

- causal (train.objective=causal): inputs are a window's first `seq_len` tokens, labels its
  last `seq_len` (the next token of each position), every position scored.
- mlm (train.objective=mlm): the window's first `seq_len` tokens, BERT-corrupted
  (megallm.data.masking); labels are the original tokens, scored where selected; with
  next-sentence prediction, half the windows get another window's second half first.

Document ids (megallm.model.packing) always come from the original tokens, so a random
replacement that happens to be an end-of-document token does not cut a document.

`StepObjective` is the contract the engine steps through: anything that turns the run's
micro-batches (token windows here; a fine-tuning's labelled rows, megallm.finetune.objectives)
into ModelInputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, TypeVar, Union

import torch

from megallm.data.masking import MaskingRule, mask_tokens, next_sentence_pairs
from megallm.model.loss import ClassTargets, Targets
from megallm.model.packing import Activations, document_ids, with_doc_ids


@dataclass
class ModelInputs:
    """One micro-batch as the model takes it."""

    tokens: torch.Tensor  # [b, s]
    doc_ids: Optional[torch.Tensor]  # [b, s], or None without document masking
    targets: Union[Targets, ClassTargets]  # a classifier's (megallm.finetune.objectives)

    @property
    def first_stage(self) -> Activations:
        """What the embedding layer takes (the first pipeline stage's input)."""
        return with_doc_ids(self.tokens, self.doc_ids)


MicroBatchT = TypeVar("MicroBatchT")  # what a run's batches yield and its objective reads
MicroBatchT_contra = TypeVar("MicroBatchT_contra", contravariant=True)


class StepObjective(Protocol[MicroBatchT_contra]):
    """Turns one micro-batch into the model's inputs and targets; `samples`: its rows' global sample
    indices (what masked-LM corruption is seeded by; other objectives may ignore them)."""

    def inputs(self, micro_batch: MicroBatchT_contra, samples: Optional[Sequence[int]] = None) -> ModelInputs:
        ...


@dataclass(frozen=True)
class Objective:
    """Turns token windows [b, seq_len + 1] into ModelInputs.

    segment_start_id: the token that starts a document under document masking, None without it;
    masking: the masked-LM rule (None: causal); nsp: next-sentence pairs (masked LM only);
    seed: the run's seed, which with each window's global sample index decides its masks.
    """

    segment_start_id: Optional[int] = None
    masking: Optional[MaskingRule] = None
    nsp: bool = False
    seed: int = 0

    def inputs(self, window: torch.Tensor, samples: Optional[Sequence[int]] = None) -> ModelInputs:
        """ModelInputs of `window` [b, seq_len + 1], whose rows are global samples `samples` (masked LM)."""
        if self.masking is None:
            tokens, labels = window[:, :-1], window[:, 1:]
            return ModelInputs(tokens, self._doc_ids(tokens), Targets(labels))
        if samples is None:
            raise ValueError("a masked-LM micro-batch needs its rows' global sample indices")
        tokens, nsp_labels = window[:, :-1], None
        doc_ids = self._doc_ids(tokens)
        if self.nsp:
            tokens, nsp_labels = next_sentence_pairs(tokens, samples, self.seed)
        masked = mask_tokens(tokens, samples, self.seed, self.masking)
        return ModelInputs(masked.inputs, doc_ids, Targets(masked.labels, masked.selected, nsp_labels))

    def _doc_ids(self, tokens: torch.Tensor) -> Optional[torch.Tensor]:
        return None if self.segment_start_id is None else document_ids(tokens, self.segment_start_id)
