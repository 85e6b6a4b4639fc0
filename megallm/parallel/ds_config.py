"""The DeepSpeed JSON, built from the run's config (users never write it by hand)."""

from __future__ import annotations

from megallm.config import RunConfig, batch_layout


def resolve_precision(precision: str, on_gpu: bool) -> str:
    """"auto" means bf16 on GPUs and fp32 on CPUs."""
    if precision == "auto":
        return "bf16" if on_gpu else "fp32"
    return precision


def deepspeed_config(cfg: RunConfig, dp: int, precision: str) -> dict:
    global_sequences, grad_accum = batch_layout(cfg.train, dp)
    return {
        "train_batch_size": global_sequences,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # megallm reports progress itself
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "FAIL"},
    }
