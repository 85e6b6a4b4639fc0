"""The one attention kernel dispatch: flash-attn on CUDA when importable, else PyTorch SDPA.

Every caller passes per-rank tensors in Megatron's `[s, b, n, d]` layout (sequence,
batch, heads, head dim) and gets `[s, b, n * d]` back. Grouped-query attention is
native to both kernels: `k` and `v` may have fewer heads than `q`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func  # type: ignore[import-not-found]
    except ImportError:
        return None
    return flash_attn_func


def attention_backend(device: torch.device, dtype: torch.dtype) -> str:
    """Which kernel `causal_attention` uses for tensors on this device and dtype."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and _flash_attn_func():
        return "flash_attn"
    return "sdpa"


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax(q k^T / sqrt(d)) v.

    q: [s, b, nh, d]; k, v: [s, b, nkv, d] with nh % nkv == 0. Returns [s, b, nh * d].
    """
    s, b, nh, d = q.shape
    if attention_backend(q.device, q.dtype) == "flash_attn":
        # flash-attn takes [b, s, n, d] and handles nkv < nh itself.
        out = _flash_attn_func()(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), causal=True)
        return out.transpose(0, 1).reshape(s, b, nh * d)
    # SDPA takes [b, n, s, d]; on CUDA it picks flash / cuDNN / efficient, on CPU the math kernel.
    q_, k_, v_ = (t.permute(1, 2, 0, 3) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q_, k_, v_, is_causal=True, enable_gqa=k.shape[2] != nh)
    return out.permute(2, 0, 1, 3).reshape(s, b, nh * d)  # [b, nh, s, d] -> [s, b, nh*d]
