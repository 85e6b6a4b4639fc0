"""Estimated memory per rank for a model, batch, precision and parallel layout (the dry run's table).

Model states follow the ZeRO paper (Rajbhandari et al. 2020, Sec. 3): with bf16 mixed
precision each parameter costs 2 bytes of weights, 2 of gradients and 12 of optimizer
state (fp32 master copy, Adam m and v); in fp32, 4 + 4 + 8. A rank holds the
parameters of its pipeline stage (the heaviest stage is reported: the first holds the
embedding, the last the output projection, and with tied embeddings both hold the
table), split over the tensor-parallel ranks except the norm weights. ZeRO-1 then
shards the optimizer state, ZeRO-2 also the gradients, ZeRO-3 also the weights, over the
data-parallel ranks.

Activations follow Korthikanti et al. 2022 (Sec. 4): per token and block, the tensors
kept for backward are the h-wide norm and residual inputs (split over TP only with
sequence parallelism) and the q/k/v, attention output, gate/up and their product (split
over TP); without a fused kernel the s x s scores come on top. Under the 1F1B pipeline
schedule the first stage keeps min(pp, micro-batches) micro-batches in flight. Full
recompute keeps only each block's input plus one block's working set; selective drops
the scores. The last stage adds the fp32 logits. It is an estimate: allocator
overheads, communication buffers and fragmentation come on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from megallm.model.config import ModelConfig, padded_vocab_size
from megallm.model.flops import block_parameters


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def stage_parameters(cfg: ModelConfig, tp: int, pp: int) -> int:
    """Parameters on one rank of the heaviest pipeline stage (blocks balanced over stages)."""
    h = cfg.hidden_size
    assert cfg.vocab_size is not None, "model.vocab_size must be resolved before estimating memory"
    vocab = padded_vocab_size(cfg.vocab_size, cfg.make_vocab_size_divisible_by, tp)
    table = vocab * h // tp
    block = (block_parameters(cfg) - 2 * h) // tp + 2 * h  # norm weights are replicated over TP
    blocks = math.ceil(cfg.num_layers / pp) * block
    if pp == 1:
        return table + blocks + h + (0 if cfg.tie_embeddings else table)
    first = table + blocks
    last = blocks + h + table  # the output projection, or with tied embeddings the table's copy
    return max(first, last)


def estimate_memory(cfg: ModelConfig, *, seq_len: int, micro_batch_size: int, precision: str, zero_stage: int,
                    dp: int, fused_attention: bool, tp: int = 1, pp: int = 1, micro_batches: int = 1,
                    recompute: str = "none", sequence_parallel: bool = False) -> MemoryEstimate:
    params = stage_parameters(cfg, tp, pp)
    assert cfg.vocab_size is not None and cfg.num_kv_heads is not None  # stage_parameters' check; __post_init__
    weight_b, grad_b, optim_b = (2, 2, 12) if precision == "bf16" else (4, 4, 8)
    weights = params * weight_b / (dp if zero_stage >= 3 else 1)
    gradients = params * grad_b / (dp if zero_stage >= 2 else 1)
    optimizer = params * optim_b / (dp if zero_stage >= 1 else 1)

    act_b = 2 if precision == "bf16" else 4
    tokens = seq_len * micro_batch_size
    h, d, f = cfg.hidden_size, cfg.head_dim, cfg.ffn_hidden_size
    replicated = 4 * h / (tp if sequence_parallel else 1)  # norm inputs and outputs, residuals
    split = ((2 * cfg.num_heads + 2 * cfg.num_kv_heads) * d + 4 * f) / tp  # q, k, v, attn out, gate/up, product
    scores = 0 if fused_attention else 2 * micro_batch_size * cfg.num_heads / tp * seq_len * seq_len
    layer_full = (tokens * (replicated + split) + scores) * act_b
    layers = math.ceil(cfg.num_layers / pp)
    if recompute == "full":
        per_micro = layers * tokens * h / (tp if sequence_parallel else 1) * act_b + layer_full
    elif recompute == "selective":
        per_micro = layers * tokens * (replicated + split) * act_b + scores * act_b
    else:
        per_micro = layers * layer_full
    in_flight = min(pp, micro_batches) if pp > 1 else 1
    logits = tokens * cfg.vocab_size / tp * (act_b + 4)  # logits and their fp32 copy for the loss (last stage)
    activations = per_micro * in_flight + (logits if pp == 1 else 0)
    if pp > 1:  # the last stage keeps fewer micro-batches in flight but adds the logits
        activations = max(activations, per_micro + logits)
    return MemoryEstimate(weights, gradients, optimizer, activations)
