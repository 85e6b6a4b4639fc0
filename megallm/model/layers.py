"""Llama building blocks on megatron-core tensor-parallel layers: RMSNorm, RoPE, GQA, SwiGLU.

Activation recompute (`recompute`): "full" keeps only each block's input and reruns the
block in backward; "selective" reruns only the core attention softmax(q k^T) v, whose
s x s scores dominate activation memory without a fused kernel (Korthikanti et al.
2022, "Reducing Activation Recomputation in Large Transformer Models").

Sequence parallelism (Korthikanti et al. 2022): outside the attention and MLP matmuls
each tensor-parallel rank keeps only its `s / tp` positions; the column-parallel layers
all-gather the sequence and the row-parallel layers reduce-scatter it. The norm weights
then see only part of the sequence, so their gradients are summed over the TP group.

Layout conventions (Megatron's): activations are `[s, b, h]`; a parallel linear returns
`(output, bias)`. A block takes and returns the hidden states alone, or
`(hidden, doc_ids)` with document masking (megallm.model.packing). Shapes in comments
are per tensor-parallel rank, `tp` ranks in all: `nh`/`nkv` below are the rank's own
query / key-value heads.

Generation (megallm.inference) runs the same blocks through `forward_cached`: the same
projections, rotary embedding and MLP over the new tokens only, whose keys and values
go into a preallocated per-layer `KVCache`; positions and the attention mask (left
padding, causality) come from the caller.

Weight layouts are chosen so that the same seed gives the same model for every
tensor-parallel degree (megatron-core initialises the full matrix on CPU and each rank
keeps its slice):
- QKV is one matrix whose rows are grouped per key-value head:
  `[q heads of group 0 | k_0 | v_0 | q heads of group 1 | k_1 | v_1 | ...]`, so a
  contiguous split by rows hands each rank whole groups.
- gate/up is one matrix `[gate; up]` split with `stride=2`, so each rank keeps its slice
  of the gate rows and its slice of the up rows.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from megatron.core.model_parallel_config import ModelParallelConfig
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from torch.utils.checkpoint import checkpoint

from megallm.model.attention import masked_attention, self_attention
from megallm.model.config import Recompute, RopeScaling
from megallm.model.packing import Activations, document_positions, split_doc_ids, with_doc_ids


def normal_init(std: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda w: nn.init.normal_(w, mean=0.0, std=std)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 (as Hugging Face Llama)."""

    def __init__(self, dim: int, eps: float, sequence_parallel_group=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        if sequence_parallel_group is not None:  # this rank saw s / tp positions: sum the gradient over TP
            self.weight.sequence_parallel = True  # type: ignore[attr-defined]  # Megatron's flag on a Parameter
            self.weight.register_hook(functools.partial(_sum_over_group, group=sequence_parallel_group))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def _sum_over_group(grad: torch.Tensor, group) -> torch.Tensor:
    grad = grad.clone()
    dist.all_reduce(grad, group=group)
    return grad


class RotaryEmbedding(nn.Module):
    """Rotary position embedding, "rotate half" convention (GPT-NeoX / Hugging Face Llama).

    Pairs dimension i with i + d/2, so Hugging Face checkpoints need no permutation.
    Positions are per token: 0..s-1, or restarting with every packed document.
    """

    inv_freq: torch.Tensor  # a buffer (register_buffer)

    def __init__(self, head_dim: int, theta: float, scaling: Optional[RopeScaling] = None):
        super().__init__()
        self.register_buffer("inv_freq", rotary_frequencies(head_dim, theta, scaling), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin in fp32, [s, b, 1, d], for positions [b, s] ([s, 1, 1, d] for [1, s])."""
        freqs = positions.float()[..., None] * self.inv_freq.to(positions.device)  # [b, s, d/2]
        emb = torch.cat((freqs, freqs), dim=-1).transpose(0, 1)[:, :, None, :]  # [s, b, 1, d]
        return emb.cos(), emb.sin()


def rotary_frequencies(head_dim: int, theta: float, scaling: Optional[RopeScaling] = None) -> torch.Tensor:
    """theta^(-2i/d) for i < d/2, fp32 [d/2]: the angle per position of each rotated pair,
    then stretched by `scaling` exactly as transformers' `_compute_linear_scaling_rope_parameters`
    and `_compute_llama3_parameters` (same operations in the same order, so the same bits)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None or not scaling.scales:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    assert scaling.rope_type == "llama3", scaling.rope_type  # the config's RopeType holds no other
    factor, low, high = scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor
    old_context = scaling.original_max_position_embeddings
    assert low is not None and high is not None and old_context is not None  # RopeScaling.problems: llama3 has them
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    # long wavelengths (low frequencies) divided by factor, short ones kept, interpolated between
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [s, b, n, d]; cos/sin: [s, b, 1, d] or [s, 1, 1, d]."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


@dataclass
class KVCache:
    """One layer's keys and values during generation, each [b, nkv, slots, d] (SDPA's layout).

    Slot i of a row holds the token at slot i of that row's (left-padded) sequence; which
    slots are filled and which may be attended is the caller's (megallm.inference).
    """

    k: torch.Tensor
    v: torch.Tensor


class GroupedQueryAttention(nn.Module):
    """Self-attention with `num_kv_heads` key/value heads shared by query groups: causal, or
    bidirectional for an encoder (model.bidirectional)."""

    def __init__(self, cfg, mp_config: ModelParallelConfig, tp_group, layer_init, out_init,
                 recompute_core: bool = False, attention: str = "auto"):
        super().__init__()
        tp = tp_group.size()
        self.recompute_core = recompute_core
        self.attention = attention  # kernels.attention: which kernel self_attention runs
        self.causal = not cfg.bidirectional
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        self.head_dim = cfg.head_dim
        self.q_per_kv = cfg.num_heads // cfg.num_kv_heads
        self.kv_heads_local = cfg.num_kv_heads // tp  # kv groups on this rank
        qkv_out = (cfg.num_heads + 2 * cfg.num_kv_heads) * self.head_dim
        self.qkv = ColumnParallelLinear(
            cfg.hidden_size, qkv_out, config=mp_config, init_method=layer_init,
            bias=False, gather_output=False, tp_group=tp_group,
        )
        self.out = RowParallelLinear(
            cfg.num_heads * self.head_dim, cfg.hidden_size, config=mp_config, init_method=out_init,
            bias=False, input_is_parallel=True, skip_bias_add=False, tp_group=tp_group,
        )

    def forward(self, x: torch.Tensor, doc_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [s, b, h] ([s / tp, b, h] under SP); doc_ids: [b, s] (full length even under SP) or None."""
        positions = None if doc_ids is None else document_positions(doc_ids)
        q, k, v = self._project(x, positions)
        if self.recompute_core and torch.is_grad_enabled():
            ctx = checkpoint(self_attention, q, k, v, doc_ids, self.attention, self.causal, use_reentrant=False)
        else:
            ctx = self_attention(q, k, v, doc_ids, self.attention, self.causal)  # [s, b, nh * d]
        out, _ = self.out(ctx)  # [s, b, h], all-reduced over tp (reduce-scattered to [s / tp, b, h] under SP)
        return out

    def forward_cached(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache, start: int,
                       mask: torch.Tensor) -> torch.Tensor:
        """Generation: attend from the new tokens to everything cached before them and to themselves.

        x: [q, b, h], the new tokens, which fill cache slots start .. start + q - 1 of every
        row; positions: [b, q], their rotary positions; mask: [b, 1, q, start + q] bool,
        True where a new token may attend a slot. Writes their keys and values into `cache`.
        No sequence parallelism (the cache holds whole rows).
        """
        q, k, v = self._project(x, positions)  # [q, b, nh, d], [q, b, nkv, d] x 2
        end = start + x.shape[0]
        cache.k[:, :, start:end] = k.permute(1, 2, 0, 3)  # [b, nkv, q, d]
        cache.v[:, :, start:end] = v.permute(1, 2, 0, 3)
        ctx = masked_attention(q, cache.k[:, :, :end], cache.v[:, :, :end], mask)  # [q, b, nh * d]
        out, _ = self.out(ctx)  # [q, b, h], all-reduced over tp
        return out

    def empty_cache(self, batch: int, slots: int) -> KVCache:
        """An unfilled cache of `slots` positions per row, on this layer's device, in its dtype."""
        weight = self.qkv.weight
        shape = (batch, self.kv_heads_local, slots, self.head_dim)
        return KVCache(torch.zeros(shape, device=weight.device, dtype=weight.dtype),
                       torch.zeros(shape, device=weight.device, dtype=weight.dtype))

    def _project(self, x: torch.Tensor, positions: Optional[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Queries, keys and values of x [s, b, h], rotated: positions [b, s], or None for 0 .. s-1.

        Returns q [s, b, nh, d], k and v [s, b, nkv, d] (s the full sequence under SP).
        """
        qkv, _ = self.qkv(x)  # [s, b, nkv * (q_per_kv + 2) * d]; all-gathered from [s / tp, ...] under SP
        s, b, _ = qkv.shape
        qkv = qkv.view(s, b, self.kv_heads_local, self.q_per_kv + 2, self.head_dim)
        q, k, v = qkv.split([self.q_per_kv, 1, 1], dim=3)
        q = q.reshape(s, b, self.kv_heads_local * self.q_per_kv, self.head_dim)  # [s, b, nh, d]
        k = k.squeeze(3)  # [s, b, nkv, d]
        v = v.squeeze(3)  # [s, b, nkv, d]
        if positions is None:
            positions = torch.arange(s, device=x.device)[None]
        cos, sin = self.rotary(positions)  # [s, b or 1, 1, d]
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), gate and up fused in one column-parallel matrix."""

    def __init__(self, cfg, mp_config: ModelParallelConfig, tp_group, layer_init, out_init):
        super().__init__()
        self.gate_up = ColumnParallelLinear(
            cfg.hidden_size, 2 * cfg.ffn_hidden_size, config=mp_config, init_method=layer_init,
            bias=False, gather_output=False, stride=2, tp_group=tp_group,
        )
        self.down = RowParallelLinear(
            cfg.ffn_hidden_size, cfg.hidden_size, config=mp_config, init_method=out_init,
            bias=False, input_is_parallel=True, skip_bias_add=False, tp_group=tp_group,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up, _ = self.gate_up(x)  # [s, b, 2 * ffn / tp]
        gate, up = gate_up.chunk(2, dim=-1)
        out, _ = self.down(F.silu(gate) * up)  # [s, b, h]
        return out


class TransformerBlock(nn.Module):
    """Pre-norm Llama block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg, mp_config: ModelParallelConfig, tp_group, recompute: str = "none",
                 attention: str = "auto"):
        super().__init__()
        assert recompute in Recompute.values(), recompute
        self.recompute_full = recompute == "full"
        layer_init = normal_init(cfg.init_std)
        # Output projections scaled by 1/sqrt(2 * layers), as GPT-2 / Megatron.
        out_init = normal_init(cfg.init_std / math.sqrt(2.0 * cfg.num_layers))
        sp_group = tp_group if mp_config.sequence_parallel else None
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, sequence_parallel_group=sp_group)
        self.attn = GroupedQueryAttention(cfg, mp_config, tp_group, layer_init, out_init,
                                          recompute_core=recompute == "selective", attention=attention)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, sequence_parallel_group=sp_group)
        self.mlp = SwiGLU(cfg, mp_config, tp_group, layer_init, out_init)

    def forward(self, activations: Activations) -> Activations:
        """x: [s, b, h] ([s / tp, b, h] under sequence parallelism), with its doc ids [b, s]
        alongside when document masking is on (megallm.model.packing); passes them on."""
        x, doc_ids = split_doc_ids(activations)
        if self.recompute_full and torch.is_grad_enabled():
            x = checkpoint(self._forward, x, doc_ids, use_reentrant=False)
        else:
            x = self._forward(x, doc_ids)
        return with_doc_ids(x, doc_ids)

    def forward_cached(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache, start: int,
                       mask: torch.Tensor) -> torch.Tensor:
        """Generation: the new tokens x [q, b, h] at cache slots start .. start + q - 1
        (see GroupedQueryAttention.forward_cached)."""
        x = x + self.attn.forward_cached(self.attn_norm(x), positions, cache, start, mask)
        return x + self.mlp(self.mlp_norm(x))

    def _forward(self, x: torch.Tensor, doc_ids: Optional[torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), doc_ids)
        return x + self.mlp(self.mlp_norm(x))
