"""The DeepSpeed JSON, built from the run's config (users never write it by hand)."""

from __future__ import annotations

from megallm.config import RunConfig, batch_layout


def zero_config(cfg: RunConfig) -> dict:
    """ZeRO settings. Communication buckets scale with the model, as the Hugging Face Trainer's
    "auto" values do (h^2 elements): DeepSpeed's fixed defaults (5e8 elements per reduce
    bucket, 2 GB in fp32) would hold a whole small model's gradients unpartitioned."""
    h = cfg.model.hidden_size
    zero = {"stage": cfg.parallel.zero_stage}
    if cfg.parallel.zero_stage >= 1:
        zero.update(reduce_bucket_size=h * h, allgather_bucket_size=h * h)
    if cfg.parallel.zero_stage == 3:
        zero.update(stage3_prefetch_bucket_size=int(0.9 * h * h), stage3_param_persistence_threshold=10 * h)
    return zero


def deepspeed_config(cfg: RunConfig, dp: int, precision: str) -> dict:
    global_sequences, grad_accum = batch_layout(cfg.train, dp)
    return {
        "train_batch_size": global_sequences,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero_config(cfg),
        # check_grad_overflow: bf16 under ZeRO-1/2 skips an update whose gradient norm is not finite,
        # as every other path does (megallm.engine.engine).
        "bf16": {"enabled": precision == "bf16", "check_grad_overflow": True},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # megallm reports progress itself
        "wall_clock_breakdown": False,
        "checkpoint": {"tag_validation": "FAIL"},
    }
