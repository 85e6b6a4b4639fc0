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


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int = 1) -> int:
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple
