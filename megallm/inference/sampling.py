"""The next token from a batch of logits: greedy, or sampled after temperature, top-k and top-p.

Filters apply in that order, as in Hugging Face's `generate`: divide by the temperature,
keep the `top_k` largest logits, then keep the smallest set of most likely tokens whose
probabilities sum to at least `top_p` (nucleus sampling, Holtzman et al. 2019); the most
likely token always stays. Sampling draws from a `torch.Generator` the caller seeds, so
a seed gives the same tokens again on the same device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. temperature 0: greedy (top_k and top_p unused)."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1: off), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def next_tokens(logits: torch.Tensor, sampling: Sampling, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits [b, vocab] -> token ids [b] int64."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = logits.topk(sampling.top_k, dim=-1).values[:, -1:]  # [b, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        logits = _nucleus(logits, sampling.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask (-inf) every token outside the smallest most-likely set holding >= top_p of the probability."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [b, vocab]
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
    drop = before >= top_p  # the set already reached top_p without this token; never the first
    drop[:, 0] = False
    return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
