"""ModelConfig: the shape of a Llama-architecture decoder (the `model` config group).

Kept free of torch and megatron imports so that configs compose and are checked in
well under a second.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

# Activation checkpointing modes (train.activation_checkpointing), see megallm.model.layers.
RECOMPUTE_MODES = ("none", "full", "selective")
# Attention kernels (kernels.attention), see megallm.model.attention.
ATTENTION_BACKENDS = ("auto", "sdpa", "flex", "flash_attn")
# How the loss is computed from the final hidden states (kernels.loss), see megallm.model.loss.
LOSS_KERNELS = ("plain", "chunked", "liger")


@dataclass
class ModelConfig:
    """Shape of a Llama-architecture decoder (the `model` group of the Hydra config)."""

    name: str = "custom"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    # Key/value heads for grouped-query attention; None means num_heads (plain multi-head).
    num_kv_heads: Optional[int] = None
    ffn_hidden_size: int = 768
    # None: taken from the tokenizer of the prepared data (see megallm.cli.pretrain.resolve_vocab).
    vocab_size: Optional[int] = None
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    # The embedding table is padded to a multiple of this times the tensor-parallel degree
    # (Megatron's default 128: whole 64-wide tiles for GEMMs, even shards for TP).
    make_vocab_size_divisible_by: int = 128

    def __post_init__(self):
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def check(self) -> list[str]:
        """Problems with this shape, each a sentence; empty when the shape is valid."""
        problems = []
        for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_hidden_size"):
            if getattr(self, field) <= 0:
                problems.append(f"model.{field} must be positive, got {getattr(self, field)}")
        if problems:
            return problems
        if self.hidden_size % self.num_heads:
            problems.append(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}"
            )
        elif self.head_dim % 2:
            problems.append(f"head dim {self.head_dim} must be even for rotary embeddings")
        if self.num_heads % self.num_kv_heads:
            problems.append(
                f"model.num_heads={self.num_heads} is not divisible by model.num_kv_heads={self.num_kv_heads}"
            )
        if self.vocab_size is not None and self.vocab_size <= 0:
            problems.append(f"model.vocab_size must be positive, got {self.vocab_size}")
        return problems

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class KernelConfig:
    """How the model computes (the `kernels` group): the fast path on GPUs, each part switchable.

    None of these changes the model's parameters or checkpoints; each changes the numbers
    only within floating-point rounding (tested against the plain path). The defaults are
    the plain path, which every device runs.
    """

    # auto: flash-attn on CUDA (bf16/fp16) when installed, FlexAttention on CUDA for masked
    # documents, SDPA otherwise; or force "sdpa", "flex" or "flash_attn".
    attention: str = "auto"
    # torch.compile each transformer block (fuses RMSNorm, RoPE and SwiGLU's elementwise work).
    compile: bool = False
    # plain: logits of the whole micro-batch in fp32, then cross-entropy. chunked: logits and
    # cross-entropy `loss_chunk_tokens` positions at a time, recomputed in backward, so the full
    # [tokens, vocab] fp32 logits never exist. liger: liger-kernel's fused linear cross-entropy
    # (CUDA, tensor parallelism 1, needs `pip install liger-kernel`).
    loss: str = "plain"
    loss_chunk_tokens: int = 2048

    def check(self) -> list[str]:
        problems = []
        if self.attention not in ATTENTION_BACKENDS:
            problems.append(f"kernels.attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention!r}")
        if self.loss not in LOSS_KERNELS:
            problems.append(f"kernels.loss must be one of {', '.join(LOSS_KERNELS)}, got {self.loss!r}")
        if self.loss_chunk_tokens <= 0:
            problems.append(f"kernels.loss_chunk_tokens must be positive, got {self.loss_chunk_tokens}")
        return problems


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int = 1) -> int:
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple
