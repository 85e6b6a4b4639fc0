"""The language-model loss from the final hidden states: plain, chunked or liger-kernel's fused.

All three return the mean cross-entropy over a micro-batch's scored positions (every
position for next-token prediction; given a `loss_mask`, the masked-LM's selected
positions, or a fine-tuning's response tokens) and differ only in memory and speed
(kernels.loss, megallm.model.config.KernelConfig):
- plain (`lm_loss`): the logits [s, b, vocab / tp] of the whole micro-batch, in fp32 for
  the cross-entropy. For Llama 3's vocabulary of 128,256 and 8192 tokens that is 4.2 GB
  in fp32, plus its gradient: more than the rest of a 1B model's activations.
- chunked (`chunked_lm_loss`): logits and cross-entropy `chunk_tokens` positions at a time,
  each chunk under activation checkpointing, so backward recomputes one chunk's logits at
  a time and the full logits never exist. Works with tensor parallelism (the vocabulary-
  parallel cross-entropy runs per chunk). Costs one more output projection forward.
- liger (`liger_lm_loss`): liger-kernel's fused linear cross-entropy (Triton, CUDA), which
  also chunks and computes the gradient in its forward. Tensor parallelism 1 only.
Padded vocabulary rows never take probability: plain and chunked mask their logits to
-inf (megallm.model.llama.mask_padded_vocab), liger is given only the real rows.

`Targets` are what a micro-batch is scored against: the labels [b, s], with the loss
mask [b, s] (bool) and next-sentence labels [b] when the objective has them.
`objective_loss` scores the pipeline's last stage output with them. A sequence classifier
(model.num_labels) is scored by `classification_loss` against `ClassTargets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
from torch.utils.checkpoint import checkpoint


@dataclass
class Targets:
    """What a micro-batch is scored against.

    With a loss mask the number of scored positions varies from micro-batch to micro-batch, so a
    per-micro-batch mean would weigh tokens by how the batch was cut into micro-batches (the data-
    parallel degree, the accumulation steps). `denominator` fixes that: the scored positions of the
    whole optimizer step (all micro-batches, all data-parallel ranks) divided by the number of
    micro-batches they form; the engine computes it (megallm.engine.engine). Averaging the micro-
    batch losses then gives the mean over every scored token of the step, in every layout.
    """

    labels: torch.Tensor  # [b, s] token ids
    loss_mask: Optional[torch.Tensor] = None  # [b, s] bool: the positions scored; None: all
    nsp_labels: Optional[torch.Tensor] = None  # [b] int64: 1 where the second half is not the continuation
    denominator: Optional[torch.Tensor] = None  # 0-dim float; None: this micro-batch's scored positions

    def as_kwargs(self) -> dict:
        """As LlamaModel.forward takes them."""
        return {"labels": self.labels, "loss_mask": self.loss_mask, "nsp_labels": self.nsp_labels,
                "denominator": self.denominator}

    def as_tuple(self) -> Union[torch.Tensor, tuple[torch.Tensor, ...]]:
        """As DeepSpeed's pipeline carries labels: a tensor, or a tuple of tensors (see `from_tuple`)."""
        if self.loss_mask is None and self.nsp_labels is None:
            return self.labels
        mask = self.loss_mask if self.loss_mask is not None else torch.ones_like(self.labels, dtype=torch.bool)
        denominator = self.denominator if self.denominator is not None else mask.sum().float().clamp(min=1)
        return (self.labels, mask, denominator) + (() if self.nsp_labels is None else (self.nsp_labels,))

    @classmethod
    def from_tuple(cls, value: Union[torch.Tensor, tuple[torch.Tensor, ...]]) -> "Targets":
        if isinstance(value, torch.Tensor):
            return cls(value)
        labels, mask, denominator, *nsp = value
        return cls(labels, mask, nsp[0] if nsp else None, denominator)


def _masked_mean(per_token: torch.Tensor, loss_mask: Optional[torch.Tensor],
                 denominator: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sum of per_token [s, b] over loss_mask [b, s] divided by `denominator` (default: the positions
    scored; a micro-batch that scores none gives 0); the plain mean when there is no mask."""
    if loss_mask is None:
        return per_token.mean()
    weights = loss_mask.t().to(per_token.dtype)
    return (per_token * weights).sum() / (weights.sum().clamp(min=1) if denominator is None else denominator)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
            denominator: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean cross-entropy over the scored positions (see Targets.denominator). logits: [s, b, vocab / tp];
    labels, loss_mask: [b, s]."""
    per_token = vocab_parallel_cross_entropy(logits.float(), labels.t().contiguous())  # [s, b]
    return _masked_mean(per_token, loss_mask, denominator)


def chunked_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor],
                    chunk_tokens: int, loss_mask: Optional[torch.Tensor] = None,
                    denominator: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`lm_loss(project(hidden), labels, loss_mask, denominator)` computed `chunk_tokens` positions (over the
    batch) at a time.

    hidden: [s, b, h]; labels, loss_mask: [b, s]; project: hidden [c, b, h] -> logits [c, b, vocab / tp].
    """
    s, b = hidden.shape[0], hidden.shape[1]
    step = max(1, chunk_tokens // b)
    weights = torch.ones_like(labels, dtype=torch.float32) if loss_mask is None else loss_mask.float()
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, s, step):
        chunk = slice(start, min(start + step, s))
        total = total + checkpoint(_chunk_loss_sum, project, hidden[chunk], labels[:, chunk], weights[:, chunk],
                                   use_reentrant=False)
    return total / (weights.sum().clamp(min=1) if denominator is None else denominator)


def _chunk_loss_sum(project, hidden: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    per_token = vocab_parallel_cross_entropy(project(hidden).float(), labels.t().contiguous())
    return (per_token * weights.t()).sum()


def liger_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, vocab_size: int,
                  loss_mask: Optional[torch.Tensor] = None, denominator: Optional[torch.Tensor] = None) -> torch.Tensor:
    """liger-kernel's fused linear cross-entropy over the real vocabulary rows of `weight` [vocab, h]."""
    from liger_kernel.transformers.fused_linear_cross_entropy import (  # optional: liger-kernel, CUDA only
        LigerFusedLinearCrossEntropyLoss,
    )

    s, b, h = hidden.shape
    flat = hidden.reshape(s * b, h)  # token (i, j) at row i * b + j, as labels.t() flattens
    if loss_mask is not None:  # liger skips ignore_index (-100) positions and averages over the rest
        labels = labels.masked_fill(~loss_mask, -100)
    loss = LigerFusedLinearCrossEntropyLoss()(weight[:vocab_size], flat, labels.t().reshape(s * b))
    if loss_mask is not None and denominator is not None:
        loss = loss * loss_mask.sum().clamp(min=1) / denominator
    return loss


def nsp_loss(nsp_logits: torch.Tensor, nsp_labels: torch.Tensor) -> torch.Tensor:
    """Mean next-sentence cross-entropy: logits [b, 2], labels [b]."""
    return F.cross_entropy(nsp_logits.float(), nsp_labels)


@dataclass
class ClassTargets:
    """What a sequence classifier's micro-batch is scored against: one class per row, and how the
    per-position logits are pooled into the row's logits (`pooling_weights`)."""

    labels: torch.Tensor  # [b] int64 class ids
    pool_weights: torch.Tensor  # [b, s] float: the row's logits are sum_t w[t] * logits[t]

    def as_tuple(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.labels, self.pool_weights

    def as_kwargs(self) -> dict:
        return {"labels": self.labels, "pool_weights": self.pool_weights}


def pooling_weights(lengths: torch.Tensor, seq_len: int, pooling: str) -> torch.Tensor:
    """[b, seq_len] weights over each row's first `lengths` [b] positions (the rest is padding):
    last: 1 at the last real token; first: 1 at position 0; mean: 1 / length on every real token.
    A linear head's logits pooled by these equal the head applied to the pooled hidden states."""
    positions = torch.arange(seq_len, device=lengths.device)[None]  # [1, s]
    if pooling == "last":
        return (positions == (lengths[:, None] - 1)).float()
    if pooling == "first":
        return (positions == 0).float().expand(len(lengths), seq_len).contiguous()
    real = (positions < lengths[:, None]).float()
    return real / lengths[:, None].clamp(min=1)


def class_logits(logits: torch.Tensor, pool_weights: torch.Tensor) -> torch.Tensor:
    """Per-position class logits [s, b, classes] pooled into [b, classes]."""
    return torch.einsum("sbc,bs->bc", logits.float(), pool_weights.float())


def classification_loss(outputs: torch.Tensor, targets: Union[ClassTargets, tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """Mean cross-entropy of the pooled class logits (also the pipeline's loss function for classifiers)."""
    labels, pool_weights = targets.as_tuple() if isinstance(targets, ClassTargets) else targets
    return F.cross_entropy(class_logits(outputs, pool_weights), labels)


def objective_loss(outputs: Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]],
                   targets: Union[torch.Tensor, tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """The pipeline's loss function: the last stage's logits [s, b, vocab / tp] (with the next-sentence
    logits [b, 2] when the model has that head) against `Targets.as_tuple()`."""
    target = Targets.from_tuple(targets)
    logits, nsp_logits = (outputs, None) if isinstance(outputs, torch.Tensor) else outputs
    loss = lm_loss(logits, target.labels, target.loss_mask, target.denominator)
    if nsp_logits is not None:
        assert target.nsp_labels is not None, "a next-sentence head's logits come with nsp_labels"
        loss = loss + nsp_loss(nsp_logits, target.nsp_labels)
    return loss
