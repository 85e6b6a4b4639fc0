"""Checks of a composed RunConfig that types alone cannot express, and the batch arithmetic.

Everything here runs before any process group starts, so a mistake costs a second,
not a cluster allocation. Each check raises `ConfigError` with the first problem.
"""

from __future__ import annotations

import importlib.util

from megallm.config.schema import RunConfig, TrainConfig
from megallm.errors import ConfigError
from megallm.model.config import RECOMPUTE_MODES
from megallm.parallel.dims import ParallelDims

PRECISIONS = ("auto", "bf16", "fp32")
WANDB_MODES = ("offline", "online", "disabled")
PIPELINE_PARTITIONS = ("layers", "parameters")


def batch_layout(train: TrainConfig, dp: int) -> tuple[int, int]:
    """(sequences per optimizer step, gradient-accumulation steps) for `dp` data-parallel ranks."""
    per_pass = train.seq_len * train.micro_batch_size * dp
    if train.global_batch_tokens % per_pass:
        raise ConfigError(
            f"train.global_batch_tokens={train.global_batch_tokens} is not a multiple of "
            f"seq_len x micro_batch_size x data-parallel ranks = {train.seq_len} x "
            f"{train.micro_batch_size} x {dp} = {per_pass}; pick a multiple of {per_pass}"
        )
    return train.global_batch_tokens // train.seq_len, train.global_batch_tokens // per_pass


def check_config(cfg: RunConfig, world_size: int) -> None:
    """Raise ConfigError for the first inconsistent value (types are Hydra's job)."""
    p, t, d = cfg.parallel, cfg.train, cfg.data
    world = planned_world_size(cfg, world_size)
    problems = list(cfg.model.check()) + cfg.kernels.check() + kernel_layout_problems(cfg)
    problems += ParallelDims.problems(cfg.model, p.tp, p.pp, p.zero_stage, world)
    if p.sequence_parallel and p.tp == 1:
        problems.append("parallel.sequence_parallel=true needs parallel.tp > 1 (it splits the sequence over "
                        "the tensor-parallel ranks)")
    if p.pipeline_partition not in PIPELINE_PARTITIONS:
        problems.append(f"parallel.pipeline_partition must be layers or parameters, got {p.pipeline_partition!r}")
    for name in ("steps", "seq_len", "global_batch_tokens", "micro_batch_size"):
        if getattr(t, name) <= 0:
            problems.append(f"train.{name} must be positive, got {getattr(t, name)}")
    if t.activation_checkpointing not in RECOMPUTE_MODES:
        problems.append(f"train.activation_checkpointing must be none, full or selective, "
                        f"got {t.activation_checkpointing!r}")
    if t.precision not in PRECISIONS:
        problems.append(f"train.precision must be auto, bf16 or fp32, got {t.precision!r}")
    if t.stop_at_step < 0 or t.stop_at_step > t.steps:
        problems.append(f"train.stop_at_step={t.stop_at_step} must be between 0 and train.steps={t.steps}")
    if cfg.optim.warmup_steps < 0 or not 0 <= cfg.optim.min_lr_ratio <= 1:
        problems.append("optim.warmup_steps must be >= 0 and optim.min_lr_ratio within [0, 1]")
    if d.streams < 1 or d.num_workers < 0 or d.prefetch < 1:
        problems.append(f"data.streams and data.prefetch must be >= 1 and data.num_workers >= 0, got "
                        f"streams={d.streams} prefetch={d.prefetch} num_workers={d.num_workers}")
    if cfg.logging.wandb.mode not in WANDB_MODES:
        problems.append(f"logging.wandb.mode must be offline, online or disabled, got {cfg.logging.wandb.mode!r}")
    if problems:
        raise ConfigError(problems[0])
    batch_layout(t, p.dims(world).dp)


def kernel_layout_problems(cfg: RunConfig) -> list[str]:
    """Fast-path switches (`kernels`) that this parallel layout cannot run."""
    p, loss = cfg.parallel, cfg.kernels.loss
    if loss == "chunked" and (p.pp > 1 or p.sequence_parallel):
        return ["kernels.loss=chunked needs parallel.pp=1 and parallel.sequence_parallel=false; "
                "use kernels.loss=plain with this layout"]
    if loss == "liger" and (p.tp > 1 or p.pp > 1):
        return ["kernels.loss=liger needs parallel.tp=1 and parallel.pp=1 (it sees the whole vocabulary on one "
                "rank); use kernels.loss=chunked with tensor parallelism"]
    return []


def check_device_support(cfg: RunConfig, on_gpu: bool) -> None:
    """Raise ConfigError for a setting this machine cannot run (before any process group starts)."""
    k = cfg.kernels
    if cfg.parallel.sequence_parallel and not on_gpu:
        raise ConfigError("parallel.sequence_parallel=true needs GPUs with NCCL: gloo (CPU) has no reduce-scatter; "
                          "set parallel.sequence_parallel=false")
    if k.attention == "flex" and not on_gpu:
        raise ConfigError("kernels.attention=flex needs a GPU to train: PyTorch has no FlexAttention backward on CPU; "
                          "use kernels.attention=auto (SDPA on CPU)")
    if k.loss == "liger" and not on_gpu:
        raise ConfigError("kernels.loss=liger needs a GPU (liger-kernel runs Triton kernels); "
                          "use kernels.loss=chunked on CPU")
    if k.attention == "flash_attn" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("kernels.attention=flash_attn needs flash-attn, which is not installed: "
                          "pip install -e .[gpu], or use kernels.attention=auto")
    if k.loss == "liger" and importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("kernels.loss=liger needs liger-kernel, which is not installed: pip install liger-kernel, "
                          "or use kernels.loss=chunked")


def planned_world_size(cfg: RunConfig, world_size: int) -> int:
    """The ranks the run is for: this launch's, or train.dry_run_world_size in a dry run."""
    if cfg.train.dry_run and cfg.train.dry_run_world_size:
        return cfg.train.dry_run_world_size
    return world_size
