"""Checks of a composed RunConfig that types alone cannot express, and the batch arithmetic.

Everything here runs before any process group starts, so a mistake costs a second,
not a cluster allocation. Each check raises `ConfigError` with the first problem.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from typing import Callable, Mapping

from megallm.config.schema import WANDB_MODES, LRSchedule, RunConfig, TrainConfig, TrainingObjective, step_ranges
from megallm.errors import ConfigError
from megallm.model.config import AttentionKernel, LossKernel
from megallm.parallel.dims import ParallelDims

INT64_LIMIT = 2**63  # every integer of a config must be below it: torch sizes, numpy indices, seeds are int64

# Ranges of single values: (key, test, what the value must be). A bad value is reported as
# "KEY must be WHAT, got VALUE" before anything starts (a negative LR or a zero interval would
# otherwise fail minutes later, inside a process group, or not at all). A null (optional) value
# is not checked here.
_positive = (lambda v: v > 0, "> 0")
_non_negative = (lambda v: v >= 0, ">= 0")
RANGES: list[tuple[str, Callable[[float], bool], str]] = [
    # the model's numbers: out of range, each is a traceback at start-up (torch's normal_ refuses a
    # negative std, the vocabulary padding divides by zero) or NaN at the first step
    ("model.init_std", lambda v: v > 0, "> 0 (the standard deviation of the initial weights)"),
    ("model.norm_eps", lambda v: v > 0, "> 0 (RMSNorm divides by sqrt(mean square + eps))"),
    ("model.rope_theta", lambda v: v > 1, "> 1 (the RoPE base: 10000 in Llama 2, 500000 in Llama 3)"),
    ("model.make_vocab_size_divisible_by", lambda v: v >= 1, ">= 1 (the embedding table is padded to a multiple "
     "of it)"),
    ("optim.lr", *_positive),
    ("optim.min_lr_ratio", lambda v: 0 <= v <= 1, "within [0, 1]"),
    ("optim.warmup_steps", *_non_negative),
    ("optim.weight_decay", *_non_negative),
    ("optim.beta1", lambda v: 0 <= v < 1, "within [0, 1)"),
    ("optim.beta2", lambda v: 0 <= v < 1, "within [0, 1)"),
    ("optim.eps", *_positive),
    ("optim.grad_clip", lambda v: v >= 0, ">= 0 (0 disables clipping)"),
    ("optim.decay_fraction", lambda v: 0 < v <= 1, "within (0, 1]"),
    ("optim.decay_steps", lambda v: v >= 0, ">= 0 (0 takes optim.decay_fraction)"),
    ("train.steps", *_positive),
    ("train.seq_len", lambda v: v >= 2, ">= 2 (in a window of one token each position sees only itself)"),
    ("train.seed", lambda v: 0 <= v < INT64_LIMIT, "within [0, 2^63) (torch and numpy seed their generators "
     "with it)"),
    ("train.dry_run_world_size", lambda v: v >= 1, ">= 1, or null for this launch's ranks"),
    ("train.global_batch_tokens", *_positive),
    ("train.micro_batch_size", *_positive),
    ("train.eval_every", lambda v: v >= 0, ">= 0 (0 disables evaluation)"),
    ("train.eval_batches", *_positive),
    ("data.streams", *_positive),
    ("data.prefetch", *_positive),
    ("data.num_workers", *_non_negative),
    ("checkpoint.every", lambda v: v >= 0, ">= 0 (0 saves only the last step)"),
    ("checkpoint.keep_last", lambda v: v >= 0, ">= 0 (0 keeps all)"),
    ("logging.every", *_positive),
    ("nan_guard.max_events", *_non_negative),
    ("kernels.loss_chunk_tokens", *_positive),
    ("mlm.mask_prob", lambda v: 0 < v < 1, "within (0, 1)"),
    ("finetune.val_fraction", lambda v: 0 < v < 1, "within (0, 1)"),
    ("mlm.replace_with_mask", lambda v: 0 <= v <= 1, "within [0, 1]"),
    ("mlm.replace_with_random", lambda v: 0 <= v <= 1, "within [0, 1]"),
    ("downstream.every", lambda v: v >= 0, ">= 0 (0 turns downstream evaluation off)"),
    ("downstream.k", *_non_negative),
    ("downstream.limit", lambda v: v >= 1, ">= 1, or null for every example"),
    ("downstream.seed", *_non_negative),
    ("downstream.batch_size", *_positive),
    ("downstream.max_new_tokens", *_positive),
]


def _value(cfg: RunConfig, key: str):
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def range_problems(cfg: RunConfig) -> list[str]:
    """"KEY must be WHAT, got VALUE" for every value outside its range in RANGES (NaN and
    infinity are out of every range), and for every integer that int64 cannot hold."""
    problems = []
    for key, test, what in RANGES:
        value = _value(cfg, key)
        if value is not None and not (math.isfinite(value) and test(value)):
            problems.append(f"{key} must be {what}, got {value}")
    return problems + [f"{key} must fit in 64 bits (below 2^63: torch and numpy count in int64), got {value}"
                       for key, value in _integers(cfg) if not -INT64_LIMIT <= value < INT64_LIMIT]


def _integers(node, path: str = "") -> list[tuple[str, int]]:
    """(dotted key, value) of every integer in a config's dataclasses (lists included)."""
    found = []
    for field in dataclasses.fields(node):
        key, value = f"{path}{field.name}", getattr(node, field.name)
        if dataclasses.is_dataclass(value):
            found += _integers(value, key + ".")
        elif isinstance(value, (list, tuple)):
            found += [(f"{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, int) and not isinstance(v, bool)]
        elif isinstance(value, int) and not isinstance(value, bool):
            found.append((key, value))
    return found


def context_problems(cfg: RunConfig) -> list[str]:
    """The training window against what the model and the layout take: the model's context
    (max_position_embeddings), the split of the sequence over tensor-parallel ranks, and the run's
    token count in the int64 counters of samples and tokens seen."""
    t, m, p = cfg.train, cfg.model, cfg.parallel
    problems = []
    if m.max_position_embeddings is not None and 0 < m.max_position_embeddings < t.seq_len:
        problems.append(f"train.seq_len={t.seq_len} exceeds model.max_position_embeddings={m.max_position_embeddings}, "
                        f"the context model {m.name} is made for; raise model.max_position_embeddings to at least "
                        f"{t.seq_len} (for a pretrained model, with RoPE scaling: model.rope_scaling.rope_type=linear "
                        "or llama3 and its factor) or lower train.seq_len")
    if p.sequence_parallel and p.tp > 1 and t.seq_len % p.tp:
        problems.append(f"parallel.sequence_parallel=true splits each sequence over the parallel.tp={p.tp} "
                        f"tensor-parallel ranks, and train.seq_len={t.seq_len} is not a multiple of {p.tp}; "
                        f"use a train.seq_len divisible by {p.tp}")
    if 0 < t.steps and 0 < t.global_batch_tokens and t.steps * t.global_batch_tokens >= INT64_LIMIT:
        problems.append(f"train.steps x train.global_batch_tokens = {t.steps} x {t.global_batch_tokens} tokens is "
                        "more than the run's counters of samples and tokens hold (2^63); lower train.steps")
    return problems


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
    p, t = cfg.parallel, cfg.train
    world = planned_world_size(cfg, world_size)
    problems = list(cfg.model.check()) + kernel_layout_problems(cfg)
    problems += ParallelDims.problems(cfg.model, p.tp, p.pp, p.zero_stage, world)
    if p.sequence_parallel and p.tp == 1:
        problems.append("parallel.sequence_parallel=true needs parallel.tp > 1 (it splits the sequence over "
                        "the tensor-parallel ranks)")
    problems += range_problems(cfg)
    problems += context_problems(cfg)
    if cfg.optim.schedule == LRSchedule.wsd and cfg.optim.warmup_steps + cfg.optim.wsd_decay_steps(t.steps) > t.steps:
        problems.append(f"optim.warmup_steps={cfg.optim.warmup_steps} and the WSD decay's "
                        f"{cfg.optim.wsd_decay_steps(t.steps)} steps exceed train.steps={t.steps}, so the run would "
                        "not decay to its floor; lower optim.warmup_steps or optim.decay_steps / optim.decay_fraction")
    if t.stop_at_step < 0 or t.stop_at_step > t.steps:
        problems.append(f"train.stop_at_step={t.stop_at_step} must be between 0 and train.steps={t.steps}")
    if any(not 1 <= step <= t.steps for step in cfg.checkpoint.at_steps):
        problems.append(f"checkpoint.at_steps={list(cfg.checkpoint.at_steps)} must hold steps between 1 and "
                        f"train.steps={t.steps}")
    try:
        step_ranges(cfg.nan_guard.skip_steps)
    except ValueError as bad:
        problems.append(f"nan_guard.skip_steps: {str(bad)!r} is not a step N >= 1 or a range A-B of steps; "
                        "write e.g. nan_guard.skip_steps=[100-120,250]")
    problems += objective_problems(cfg)
    problems += wandb_mode_problems(cfg, os.environ)
    problems += source_problems(cfg)
    if problems:
        raise ConfigError(problems[0])
    batch_layout(t, p.dims(world).dp)


def source_problems(cfg: RunConfig) -> list[str]:
    """data.sources: each with a path, a finite weight >= 0 (not all 0) and a max_epochs > 0 where set."""
    sources = cfg.data.source_settings()  # raises for a malformed source (one line)
    problems = []
    for name, source in sources.items():
        if not source.path.strip():
            problems.append(f"data.sources.{name}.path is missing; set +data.sources.{name}.path=FOLDER (a corpus "
                            "tools/prepare_data.py wrote)")
        if not (math.isfinite(source.weight) and source.weight >= 0):
            problems.append(f"data.sources.{name}.weight must be a finite number >= 0, got {source.weight}")
        if source.max_epochs is not None and not source.max_epochs > 0:
            problems.append(f"data.sources.{name}.max_epochs must be > 0 (or null: no cap), got {source.max_epochs}")
    if sources and not problems and not any(s.weight > 0 for s in sources.values()):
        problems.append("data.sources: every weight is 0; give at least one source a positive weight")
    return problems + stage_problems(cfg, list(sources))


def stage_problems(cfg: RunConfig, sources: list[str]) -> list[str]:
    """data.stages and data.anneal: over the run's sources, at increasing steps inside the run, weights
    >= 0 and not all 0; an anneal only with a WSD schedule."""
    stages = cfg.data.stage_settings()
    if stages and not sources:
        return ["data.stages and data.anneal change a mixture's weights: declare the sources first "
                "(+data.sources.NAME.path=FOLDER for each)"]
    steps, previous = cfg.train.steps, 0
    for i, (at, weights) in enumerate(stages):
        where = "data.anneal" if at == "decay" else f"data.stages[{i}]"
        unknown = [name for name in weights if name not in sources]
        if unknown:
            return [f"{where} names {unknown[0]!r}, which is not a source (the sources are {', '.join(sources)})"]
        if any(not (math.isfinite(w) and w >= 0) for w in weights.values()) or not any(weights.values()):
            return [f"{where}: weights must be finite and >= 0, not all 0, got {weights}"]
        if at == "decay":
            if cfg.optim.schedule != LRSchedule.wsd:
                return ["data.anneal starts at the WSD decay: set optim.schedule=wsd, or give the step with "
                        "data.stages"]
            at = cfg.optim.decay_start(steps)
        if not isinstance(at, int) or not previous < at < steps:
            return [f"{where} starts after step {at}, which must lie after the previous stage's ({previous}) and "
                    f"before train.steps={steps}"]
        previous = at
    return []


def apply_objective(cfg: RunConfig) -> None:
    """The model's shape follows the objective: train.objective=mlm makes it an encoder
    (model.bidirectional) and mlm.nsp gives it the next-sentence head (model.nsp_head)."""
    if cfg.train.objective == TrainingObjective.mlm:
        cfg.model.bidirectional = True
        cfg.model.nsp_head = cfg.mlm.nsp


def objective_problems(cfg: RunConfig) -> list[str]:
    """train.objective and the mlm settings against the model and the data."""
    t, m = cfg.train, cfg.mlm
    causal = t.objective == TrainingObjective.causal
    if causal and cfg.model.bidirectional and not cfg.model.num_labels:  # a classifier: either
        return [f"model {cfg.model.name} is bidirectional (an encoder): train it with train.objective=mlm, "
                "or set model.bidirectional=false"]
    if causal and m.nsp:
        return ["mlm.nsp=true needs train.objective=mlm"]
    problems = []
    if m.replace_with_mask + m.replace_with_random > 1:
        problems.append(f"mlm.replace_with_mask + mlm.replace_with_random must be <= 1 (the rest keep their token), "
                        f"got {m.replace_with_mask} + {m.replace_with_random}")
    if m.nsp and cfg.data.document_masking:
        problems.append("mlm.nsp=true needs data.document_masking=false: a window's two halves must attend to "
                        "each other")
    if m.nsp and t.micro_batch_size < 2:
        problems.append("mlm.nsp=true needs train.micro_batch_size >= 2 (a window's second half is swapped with "
                        "another window's of its micro-batch)")
    if m.nsp and cfg.parallel.sequence_parallel:
        problems.append("mlm.nsp=true needs parallel.sequence_parallel=false")
    return problems


def wandb_mode_problems(cfg: RunConfig, environ: Mapping[str, str]) -> list[str]:
    """A W&B mode outside WANDB_MODES: logging.wandb.mode's, or where it is null and W&B is enabled,
    WANDB_MODE's (megallm.config.schema.WandbConfig.resolved)."""
    wandb = cfg.logging.wandb
    if wandb.mode is not None and wandb.mode not in WANDB_MODES:
        return [f"logging.wandb.mode must be offline, online or disabled, got {wandb.mode!r}"]
    mode = wandb.resolved(environ).mode
    if wandb.enabled and mode not in WANDB_MODES:
        return [f"the environment's WANDB_MODE must be offline, online or disabled (logging.wandb.mode is null), "
                f"got {mode!r}; set logging.wandb.mode or WANDB_MODE"]
    return []


def kernel_layout_problems(cfg: RunConfig) -> list[str]:
    """Fast-path switches (`kernels`) that this parallel layout cannot run."""
    p, loss = cfg.parallel, cfg.kernels.loss
    if loss == LossKernel.chunked and (p.pp > 1 or p.sequence_parallel):
        return ["kernels.loss=chunked needs parallel.pp=1 and parallel.sequence_parallel=false; "
                "use kernels.loss=plain with this layout"]
    if loss == LossKernel.liger and (p.tp > 1 or p.pp > 1):
        return ["kernels.loss=liger needs parallel.tp=1 and parallel.pp=1 (it sees the whole vocabulary on one "
                "rank); use kernels.loss=chunked with tensor parallelism"]
    return []


def check_device_support(cfg: RunConfig, on_gpu: bool) -> None:
    """Raise ConfigError for a setting this machine cannot run (before any process group starts)."""
    k = cfg.kernels
    if cfg.parallel.sequence_parallel and not on_gpu:
        raise ConfigError("parallel.sequence_parallel=true needs GPUs with NCCL: gloo (CPU) has no reduce-scatter; "
                          "set parallel.sequence_parallel=false")
    if k.attention == AttentionKernel.flex and not on_gpu:
        raise ConfigError("kernels.attention=flex needs a GPU to train: PyTorch has no FlexAttention backward on CPU; "
                          "use kernels.attention=auto (SDPA on CPU)")
    if k.loss == LossKernel.liger and not on_gpu:
        raise ConfigError("kernels.loss=liger needs a GPU (liger-kernel runs Triton kernels); "
                          "use kernels.loss=chunked on CPU")
    if k.attention == AttentionKernel.flash_attn and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("kernels.attention=flash_attn needs flash-attn, which is not installed: "
                          "pip install -e .[gpu], or use kernels.attention=auto")
    if k.loss == LossKernel.liger and importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("kernels.loss=liger needs liger-kernel, which is not installed: pip install liger-kernel, "
                          "or use kernels.loss=chunked")


def planned_world_size(cfg: RunConfig, world_size: int) -> int:
    """The ranks the run is for: this launch's, or train.dry_run_world_size in a dry run."""
    if cfg.train.dry_run and cfg.train.dry_run_world_size:
        return cfg.train.dry_run_world_size
    return world_size
