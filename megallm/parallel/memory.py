"""Estimated memory per rank for a model, batch, precision and ZeRO stage (the dry run's table).

Model states follow the ZeRO paper (Rajbhandari et al. 2020, Sec. 3): with bf16 mixed
precision each parameter costs 2 bytes of weights, 2 of gradients and 12 of optimizer
state (fp32 master copy, Adam m and v); in fp32, 4 + 4 + 8. ZeRO-1 shards the optimizer
state, ZeRO-2 also the gradients, ZeRO-3 also the weights, over the data-parallel ranks.
Activations count the tensors one Llama block keeps for backward per token (inputs of
the norms and linears, q/k/v, attention output, gate/up output and their product) plus
the fp32 logits; the CPU math attention also keeps the s x s scores. It is an estimate
(allocator overheads, buffers and fragmentation come on top).
"""

from __future__ import annotations

from dataclasses import dataclass

from megallm.model.flops import parameter_count
from megallm.model.config import ModelConfig


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def estimate_memory(cfg: ModelConfig, *, seq_len: int, micro_batch_size: int, precision: str,
                    zero_stage: int, dp: int, fused_attention: bool) -> MemoryEstimate:
    params = parameter_count(cfg).total
    weight_b, grad_b, optim_b = (2, 2, 12) if precision == "bf16" else (4, 4, 8)
    weights = params * weight_b / (dp if zero_stage >= 3 else 1)
    gradients = params * grad_b / (dp if zero_stage >= 2 else 1)
    optimizer = params * optim_b / (dp if zero_stage >= 1 else 1)

    tokens = seq_len * micro_batch_size
    h, d, f = cfg.hidden_size, cfg.head_dim, cfg.ffn_hidden_size
    per_token_layer = 4 * h + (2 * cfg.num_heads + 2 * cfg.num_kv_heads) * d + 4 * f  # elements
    act_b = 2 if precision == "bf16" else 4
    activations = cfg.num_layers * tokens * per_token_layer * act_b
    if not fused_attention:  # scores and probabilities, [b, nh, s, s]
        activations += cfg.num_layers * 2 * micro_batch_size * cfg.num_heads * seq_len * seq_len * act_b
    activations += tokens * cfg.vocab_size * (act_b + 4)  # logits and their fp32 copy for the loss
    return MemoryEstimate(weights, gradients, optimizer, activations)
