"""The Llama decoder as a flat list of layers: embedding, N transformer blocks, head.

One definition serves every layout: `LlamaModel` runs the list in one process, and the
pipeline-parallel wrapper (megallm.parallel) cuts the same list into stages. Sources:
Touvron et al. 2023 (Llama 2), Grattafiori et al. 2024 (Llama 3); weights are laid out
so that Hugging Face `LlamaForCausalLM` is a renaming (megallm.checkpoint).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from megatron.core import parallel_state
from megatron.core.model_parallel_config import ModelParallelConfig
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    VocabParallelEmbedding,
    vocab_parallel_cross_entropy,
)

from megallm.model.config import ModelConfig, padded_vocab_size
from megallm.model.layers import RMSNorm, TransformerBlock, normal_init


def megatron_config(tp: int, params_dtype: torch.dtype, initialize: bool) -> ModelParallelConfig:
    """megatron-core layer settings: weights built on CPU so every TP degree draws the same numbers."""
    return ModelParallelConfig(
        tensor_model_parallel_size=tp,
        use_cpu_initialization=True,
        perform_initialization=initialize,
        params_dtype=params_dtype,
        gradient_accumulation_fusion=False,
    )


class EmbeddingLayer(nn.Module):
    """Token ids [b, s] -> hidden states [s, b, h] (vocab split across TP ranks)."""

    def __init__(self, cfg: ModelConfig, vocab: int, mp_config: ModelParallelConfig, tp_group):
        super().__init__()
        self.embed = VocabParallelEmbedding(
            vocab, cfg.hidden_size, init_method=normal_init(cfg.init_std), config=mp_config, tp_group=tp_group
        )

    @property
    def weight(self) -> torch.Tensor:
        return self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(tokens).transpose(0, 1).contiguous()  # [b, s, h] -> [s, b, h]


class HeadLayer(nn.Module):
    """Final RMSNorm and output projection: [s, b, h] -> logits [s, b, vocab / tp]."""

    def __init__(self, cfg: ModelConfig, vocab: int, mp_config: ModelParallelConfig, tp_group):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.output = ColumnParallelLinear(
            cfg.hidden_size, vocab, config=mp_config, init_method=normal_init(cfg.init_std),
            bias=False, gather_output=False, skip_weight_param_allocation=cfg.tie_embeddings,
            tp_group=tp_group,
        )

    def forward(self, x: torch.Tensor, tied_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits, _ = self.output(self.norm(x), weight=tied_weight)
        return logits


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy. logits: [s, b, vocab / tp]; labels: [b, s]."""
    per_token = vocab_parallel_cross_entropy(logits.float(), labels.t().contiguous())  # [s, b]
    return per_token.mean()


class LlamaModel(nn.Module):
    """Embedding, `num_layers` blocks and head, run in order on one pipeline stage."""

    def __init__(self, cfg: ModelConfig, vocab: int, mp_config: ModelParallelConfig, tp_group):
        super().__init__()
        self.cfg = cfg
        self.embedding = EmbeddingLayer(cfg, vocab, mp_config, tp_group)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, mp_config, tp_group) for _ in range(cfg.num_layers))
        self.head = HeadLayer(cfg, vocab, mp_config, tp_group)

    def forward(self, tokens: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits [s, b, vocab / tp] for tokens [b, s]; the mean loss if labels [b, s] are given."""
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x)
        logits = self.head(x, self.embedding.weight if self.cfg.tie_embeddings else None)
        return logits if labels is None else lm_loss(logits, labels)


def build_model(
    cfg: ModelConfig,
    *,
    device: str | torch.device = "cpu",
    params_dtype: torch.dtype = torch.float32,
    tp_group=None,
) -> LlamaModel:
    """Build the model on this rank. On `device="meta"` nothing is allocated or initialised.

    The vocabulary is padded for the TP degree; initialisation draws from torch's global
    RNG on CPU, so seed it first for a reproducible model.
    """
    assert cfg.vocab_size is not None, "model.vocab_size must be resolved before building the model"
    tp_group = tp_group or parallel_state.get_tensor_model_parallel_group()
    tp = tp_group.size()
    vocab = padded_vocab_size(cfg.vocab_size, cfg.make_vocab_size_divisible_by, tp)
    on_meta = torch.device(device).type == "meta"
    mp_config = megatron_config(tp, params_dtype, initialize=not on_meta)
    with torch.device("meta") if on_meta else torch.device("cpu"):
        model = LlamaModel(cfg, vocab, mp_config, tp_group)
    return model if on_meta else model.to(device)
