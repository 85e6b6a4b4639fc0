"""Parameter counts and training FLOPs per token, used for MFU, dry runs and scaling laws.

FLOPs follow PaLM (Chowdhery et al. 2022, Appendix B): 6 FLOPs per matmul parameter per
token (2 forward, 4 backward) plus 12 * layers * heads * head_dim * seq_len for the
attention scores and weighted sum, counted without the causal discount as PaLM and
Megatron do. The input embedding is a lookup (no FLOPs); the output projection is a
matmul and counts even when its weight is tied to the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

from megallm.model.config import ModelConfig, padded_vocab_size


@dataclass(frozen=True)
class ParameterCount:
    total: int
    embedding: int  # input embedding table (shared with the output layer when tied)
    output: int  # untied output projection; 0 when tied
    blocks: int  # transformer blocks, the final norm and a next-sentence head

    @property
    def non_embedding(self) -> int:
        return self.blocks


def block_parameters(cfg: ModelConfig) -> int:
    h, d = cfg.hidden_size, cfg.head_dim
    assert cfg.num_kv_heads is not None  # ModelConfig.__post_init__ fills None with num_heads
    attn = h * (cfg.num_heads + 2 * cfg.num_kv_heads) * d + cfg.num_heads * d * h
    mlp = 3 * h * cfg.ffn_hidden_size
    norms = 2 * h
    return attn + mlp + norms


def parameter_count(cfg: ModelConfig, tp: int = 1, padded: bool = True) -> ParameterCount:
    """Parameters of the whole model (all TP/PP ranks together).

    padded=True counts the embedding rows the TP-padded vocabulary adds, as built;
    padded=False counts the tokenizer's vocabulary, as published model cards do.
    """
    assert cfg.vocab_size is not None, "model.vocab_size must be resolved before counting parameters"
    vocab = padded_vocab_size(cfg.vocab_size, cfg.make_vocab_size_divisible_by, tp) if padded else cfg.vocab_size
    embedding = vocab * cfg.hidden_size
    output = 0 if cfg.tie_embeddings else embedding
    blocks = cfg.num_layers * block_parameters(cfg) + cfg.hidden_size  # + final norm
    if cfg.nsp_head:  # pooler (h x h + bias) and 2-way classifier (+ bias)
        blocks += cfg.hidden_size * (cfg.hidden_size + 1) + 2 * (cfg.hidden_size + 1)
    return ParameterCount(total=embedding + output + blocks, embedding=embedding, output=output, blocks=blocks)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Training (forward + backward) FLOPs per token at this sequence length."""
    assert cfg.vocab_size is not None, "model.vocab_size must be resolved before counting FLOPs"
    matmul_params = cfg.num_layers * (block_parameters(cfg) - 2 * cfg.hidden_size)
    matmul_params += cfg.vocab_size * cfg.hidden_size  # output projection
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return 6 * matmul_params + attention
