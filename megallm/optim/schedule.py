"""The learning-rate schedule: linear warmup, then cosine decay to a floor."""

from __future__ import annotations

import math

from megallm.config import OptimConfig


def lr_multiplier(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """LR / peak LR for the optimizer step with index `step` (0-based).

    Linear warmup over `warmup_steps` (the first step already has a non-zero LR), then
    cosine decay from 1 to `min_lr_ratio` at `total_steps`, and `min_lr_ratio` after it.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
