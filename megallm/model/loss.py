"""The language-model loss from the final hidden states: plain, chunked or liger-kernel's fused.

All three return the mean next-token cross-entropy over a micro-batch and differ only in
memory and speed (kernels.loss, megallm.model.config.KernelConfig):
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
"""

from __future__ import annotations

from typing import Callable

import torch
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
from torch.utils.checkpoint import checkpoint


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy. logits: [s, b, vocab / tp]; labels: [b, s]."""
    per_token = vocab_parallel_cross_entropy(logits.float(), labels.t().contiguous())  # [s, b]
    return per_token.mean()


def chunked_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor],
                    chunk_tokens: int) -> torch.Tensor:
    """`lm_loss(project(hidden), labels)` computed `chunk_tokens` positions (over the batch) at a time.

    hidden: [s, b, h]; labels: [b, s]; project: hidden [c, b, h] -> logits [c, b, vocab / tp].
    """
    s, b = hidden.shape[0], hidden.shape[1]
    step = max(1, chunk_tokens // b)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, s, step):
        chunk = slice(start, min(start + step, s))
        total = total + checkpoint(_chunk_loss_sum, project, hidden[chunk], labels[:, chunk], use_reentrant=False)
    return total / labels.numel()


def _chunk_loss_sum(project, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return vocab_parallel_cross_entropy(project(hidden).float(), labels.t().contiguous()).sum()


def liger_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """liger-kernel's fused linear cross-entropy over the real vocabulary rows of `weight` [vocab, h]."""
    from liger_kernel.transformers.fused_linear_cross_entropy import (  # optional: liger-kernel, CUDA only
        LigerFusedLinearCrossEntropyLoss,
    )

    s, b, h = hidden.shape
    flat = hidden.reshape(s * b, h)  # token (i, j) at row i * b + j, as labels.t() flattens
    return LigerFusedLinearCrossEntropyLoss()(weight[:vocab_size], flat, labels.t().reshape(s * b))
