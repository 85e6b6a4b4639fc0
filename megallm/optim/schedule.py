"""The learning-rate schedule: linear warmup, then cosine decay or warmup-stable-decay (WSD).

- cosine: from the peak at the end of warmup down to `min_lr_ratio` at `total_steps`. Its
  shape depends on `total_steps` everywhere, so a run extended later follows another curve.
- wsd: the peak held until the last `decay_steps` steps (or `decay_fraction` of the run), which
  decay to `min_lr_ratio` with `decay_shape` (Hägele et al. 2024, "Scaling Laws and
  Compute-Optimal Training Beyond Fixed Training Durations"; MiniCPM, Hu et al. 2024). Until the
  decay starts the LR does not depend on `total_steps`: a run can be extended, and a cool-down
  branched from any checkpoint of its stable phase (a shorter run of the same schedule resumed
  from it), which gives several token budgets for little more than the cost of the longest.
"""

from __future__ import annotations

import math
from typing import Optional

from megallm.config import OptimConfig

# optim.decay_shape (megallm.config.schema.DecayShape declares these): progress p in [0, 1] of the decay -> the
# fraction of the way from the floor to the peak
DECAY_SHAPES = {
    "linear": lambda p: 1 - p,
    "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
    "1-sqrt": lambda p: 1 - math.sqrt(p),  # Hägele et al.: matches a cosine run of the same length best
}


def decay_start(cfg: OptimConfig, total_steps: int) -> int:
    """The first step (0-based) whose LR is below the peak's plateau: for WSD the end of the stable phase."""
    return cfg.decay_start(total_steps)


def lr_multiplier(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """LR / peak LR for the optimizer step with index `step` (0-based).

    Linear warmup over `warmup_steps` (the first step already has a non-zero LR), then the
    schedule's decay, which reaches `min_lr_ratio` at `total_steps` and stays there.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    start = decay_start(cfg, total_steps)
    if step < start:
        return 1.0
    progress = min(1.0, (step - start) / max(1, total_steps - start))
    shape = DECAY_SHAPES["cosine" if cfg.schedule == "cosine" else cfg.decay_shape]
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape(progress)


def schedule_change(step: int, old: tuple[OptimConfig, int], new: tuple[OptimConfig, int]) -> Optional[str]:
    """Why a run resumed at `step` under the schedule `new` (config, total steps) does not continue
    the schedule `old` it was trained with, or None when the steps so far and the next agree:
    an extended WSD run or a cool-down branched from the stable phase agree, an extended cosine does not."""
    def lrs(schedule: tuple[OptimConfig, int]) -> list[float]:
        cfg, total = schedule
        return [cfg.lr * lr_multiplier(s, cfg, total) for s in range(step + 1)]

    before, after = lrs(old), lrs(new)
    if all(math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0) for a, b in zip(before, after)):
        return None
    (old_cfg, old_total), (new_cfg, new_total) = old, new
    first = next(s for s, (a, b) in enumerate(zip(before, after)) if not math.isclose(a, b, rel_tol=1e-9))
    what = (f"train.steps {old_total} -> {new_total}" if old_total != new_total else "the optim settings changed")
    if new_cfg.schedule == "wsd" and step > decay_start(new_cfg, new_total):
        hint = (f"a WSD cool-down must branch from a checkpoint at or before step {decay_start(new_cfg, new_total)}, "
                "where this schedule's decay starts")
    elif new_cfg.schedule == "cosine" and old_cfg.schedule == "cosine":
        hint = "a cosine schedule depends on its length; optim.schedule=wsd runs can be extended without a jump"
    else:
        hint = "the checkpoint was trained with another LR schedule"
    return (f"{what}: the LR of step {step + 1} is {after[step]:.3g} where the checkpoint's schedule gives "
            f"{before[step]:.3g}, and the two differ from step {first + 1} on ({hint})")
