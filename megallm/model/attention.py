"""The one attention kernel dispatch: flash-attn, FlexAttention or PyTorch SDPA.

Every caller passes per-rank tensors in Megatron's `[s, b, n, d]` layout (sequence,
batch, heads, head dim) and gets `[s, b, n * d]` back. Grouped-query attention is
native to every kernel: `k` and `v` may have fewer heads than `q`.

Attention is causal (a decoder), or bidirectional (`causal=False`: an encoder trained
with train.objective=mlm, model.bidirectional). Given document ids (megallm.model.packing)
it is also confined to each token's own segment (block-diagonal, causal or not), as each
kernel best takes it:
- flash-attn: `flash_attn_varlen_func` over the segments laid end to end, one
  [b * s, n, d] batch cut at the int32 offsets `cu_seqlens`; no mask exists.
- FlexAttention (`torch.nn.attention.flex_attention`, compiled to a Triton kernel on
  CUDA): a `BlockMask` from the document(-causal) `mask_mod`. Blocks of 128 x 128 that
  are fully masked are skipped, so short documents cost less, and no s x s tensor
  exists. The CUDA path without flash-attn when documents are masked.
- SDPA: plain causal (`is_causal`, SDPA's flash / cuDNN backends on CUDA), unmasked when
  bidirectional, or a boolean mask [b, 1, s, s] (True: may attend). The mask materialises b * s * s bytes
  (8 x 4096 x 4096 = 128 MiB), one tensor shared by all layers of a forward pass; on CPU
  the math kernel builds the [b, n, s, s] scores anyway; on CUDA an arbitrary mask rules
  out SDPA's flash backend. The CPU path, and the reference the others are tested against.
Masks, block masks and offsets are built once per forward pass, not once per layer:
they are memoised on the doc-ids tensor, the one object every layer of a forward pass
(and its recompute in backward) receives. Doc ids are never changed in place.

`kernels.attention` in the run's config picks the kernel: "auto" (flash-attn on CUDA in
bf16/fp16 when installed; else FlexAttention on CUDA for masked documents; else SDPA),
or "sdpa", "flex", "flash_attn" to force one (checked by megallm.config.checks).

Generation with a KV cache (`masked_attention`) goes to SDPA on every device, with the
caller's boolean mask: new queries against cached keys are not square-causal, and left
padding masks keys per row.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from megallm.model.packing import once_per_doc_ids, segment_starts


@functools.cache
def _flash_attn():
    """flash-attn's (dense, varlen) kernels, or None where it is not installed."""
    try:  # optional: flash-attn is the gpu extra
        from flash_attn import flash_attn_func, flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_func, flash_attn_varlen_func


def attention_backend(device: torch.device, dtype: torch.dtype, masked: bool, requested: str = "auto") -> str:
    """Which kernel `self_attention` uses for tensors on this device and dtype, with
    (`masked`) or without document masking, given the config's `kernels.attention`."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and _flash_attn():
        return "flash_attn"
    if device.type == "cuda" and masked:
        return "flex"
    return "sdpa"


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: Optional[torch.Tensor] = None,
                   backend: str = "auto", causal: bool = True) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over earlier-or-same positions (`causal`) or all positions,
    within each token's own document if `doc_ids` are given.

    q: [s, b, nh, d]; k, v: [s, b, nkv, d] with nh % nkv == 0; doc_ids: [b, s] int, or
    None for attention over the whole sequence; backend: one of
    megallm.model.config.AttentionKernel. Returns [s, b, nh * d].
    """
    kernel = attention_backend(q.device, q.dtype, doc_ids is not None, backend)
    if kernel == "flash_attn":
        return _flash_attention(q, k, v, doc_ids, causal)
    if kernel == "flex":
        return _flex_attention(q, k, v, doc_ids, causal)
    return _sdpa_attention(q, k, v, doc_ids, causal)


def _flash_attention(q, k, v, doc_ids, causal):
    s, b, nh, d = q.shape
    dense, varlen = _flash_attn()
    q_, k_, v_ = (t.transpose(0, 1) for t in (q, k, v))  # [b, s, n, d]; flash-attn handles nkv < nh itself
    if doc_ids is None:
        out = dense(q_, k_, v_, causal=causal)  # [b, s, nh, d]
    else:
        segments = varlen_segments(doc_ids)
        # Rows end to end, [b * s, n, d], in the (b, s) order cu_seqlens counts.
        q_, k_, v_ = (t.reshape(b * s, t.shape[2], d) for t in (q_, k_, v_))
        out = varlen(q_, k_, v_, segments.cu_seqlens, segments.cu_seqlens, segments.max_seqlen,
                     segments.max_seqlen, causal=causal).view(b, s, nh, d)
    return out.transpose(0, 1).reshape(s, b, nh * d)


def _flex_attention(q, k, v, doc_ids, causal):
    s, b, nh, d = q.shape
    q_, k_, v_ = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [b, n, s, d]
    if doc_ids is None:
        mask = causal_block_mask(s, q.device) if causal else None
    else:
        mask = document_block_mask(doc_ids) if causal else document_bidirectional_block_mask(doc_ids)
    out = _flex_kernel(q.device.type)(q_, k_, v_, block_mask=mask, enable_gqa=k.shape[2] != nh)
    return out.permute(2, 0, 1, 3).reshape(s, b, nh * d)  # [b, nh, s, d] -> [s, b, nh*d]


@functools.cache
def _flex_kernel(device_type: str):
    """flex_attention, compiled on CUDA (its eager form is a slow reference that materialises
    the scores). On CPU it runs eagerly, forward only: PyTorch has no CPU backward for it."""
    # deferred: loads torch's compile machinery; only this kernel needs it
    from torch.nn.attention import flex_attention as flex

    if device_type == "cuda":
        return torch.compile(flex.flex_attention, dynamic=False)
    return _quiet_eager(flex.flex_attention)


def _quiet_eager(kernel):
    """flex_attention run eagerly without its warning that eager mode is only for debugging."""
    import warnings  # deferred: only the eager (CPU) path needs it

    def run(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention.*")
            return kernel(*args, **kwargs)

    return run


@once_per_doc_ids
def document_block_mask(doc_ids: torch.Tensor):
    """FlexAttention's BlockMask for doc_ids [b, s]: query i attends key j iff j <= i in the same segment."""
    # deferred: as in _flex_kernel
    from torch.nn.attention.flex_attention import create_block_mask

    b, s = doc_ids.shape

    def document_causal(batch, head, query, key):
        return (doc_ids[batch, query] == doc_ids[batch, key]) & (query >= key)

    return create_block_mask(document_causal, B=b, H=None, Q_LEN=s, KV_LEN=s, device=doc_ids.device)


@once_per_doc_ids
def document_bidirectional_block_mask(doc_ids: torch.Tensor):
    """FlexAttention's BlockMask for doc_ids [b, s]: query i attends key j iff both are in the same segment."""
    # deferred: as in _flex_kernel
    from torch.nn.attention.flex_attention import create_block_mask

    b, s = doc_ids.shape

    def same_document(batch, head, query, key):
        return doc_ids[batch, query] == doc_ids[batch, key]

    return create_block_mask(same_document, B=b, H=None, Q_LEN=s, KV_LEN=s, device=doc_ids.device)


@functools.lru_cache(maxsize=8)
def causal_block_mask(s: int, device: torch.device):
    """FlexAttention's BlockMask for plain causal attention over s positions (one per shape)."""
    # deferred: as in _flex_kernel
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(lambda batch, head, query, key: query >= key, B=None, H=None, Q_LEN=s, KV_LEN=s,
                             device=device)


def _sdpa_attention(q, k, v, doc_ids, causal):
    s, b, nh, d = q.shape
    # SDPA takes [b, n, s, d]; on CUDA it picks flash / cuDNN / efficient, on CPU the math kernel.
    q_, k_, v_ = (t.permute(1, 2, 0, 3) for t in (q, k, v))
    if doc_ids is None:
        mask = None
    else:
        mask = block_causal_mask(doc_ids) if causal else block_diagonal_mask(doc_ids)
    out = F.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask, is_causal=causal and mask is None,
                                         enable_gqa=k.shape[2] != nh)
    return out.permute(2, 0, 1, 3).reshape(s, b, nh * d)  # [b, nh, s, d] -> [s, b, nh*d]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) where `mask`, else -inf) v, for generation with a KV cache.

    q: [s, b, nh, d], the new tokens; k, v: [b, nkv, t, d], the cached slots up to and
    including the new tokens; mask: [b, 1, s, t] bool, True where a query may attend a
    slot (every query must have one). Returns [s, b, nh * d].
    """
    s, b, nh, d = q.shape
    out = F.scaled_dot_product_attention(q.permute(1, 2, 0, 3), k, v, attn_mask=mask,
                                         enable_gqa=k.shape[1] != nh)  # [b, nh, s, d]
    return out.permute(2, 0, 1, 3).reshape(s, b, nh * d)


@once_per_doc_ids
def block_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] bool, True where query i may attend key j: j <= i within the same segment."""
    s = doc_ids.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=doc_ids.device).tril()  # [s, s]
    same_document = doc_ids[:, :, None] == doc_ids[:, None, :]  # [b, s, s]
    return (same_document & causal)[:, None]


@once_per_doc_ids
def block_diagonal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] bool, True where query i may attend key j in both directions: the same segment."""
    return (doc_ids[:, :, None] == doc_ids[:, None, :])[:, None]


@dataclass(frozen=True)
class VarlenSegments:
    """The segments of a [b, s] batch as flash-attn's varlen kernels take them."""

    cu_seqlens: torch.Tensor  # [segments + 1] int32: each segment's first token in the [b * s] flattening, then b * s
    max_seqlen: int  # tokens in the longest segment


@once_per_doc_ids
def varlen_segments(doc_ids: torch.Tensor) -> VarlenSegments:
    """Segment boundaries: every row start and every change of doc id (one host sync)."""
    starts = segment_starts(doc_ids).flatten().nonzero().flatten()  # [segments], ascending
    end = torch.tensor([doc_ids.numel()], device=doc_ids.device)
    cu_seqlens = torch.cat([starts, end]).to(torch.int32)
    return VarlenSegments(cu_seqlens, int(cu_seqlens.diff().max()))
