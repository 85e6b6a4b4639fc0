"""RunConfig: the typed Hydra schema for a training run, and its checks.

Each concern owns a dataclass (the model's lives in megallm.model.llama); `RunConfig`
nests them. Hydra merges `conf/config.yaml` and the chosen `conf/model/*.yaml` onto this
schema, so an unknown key or a value of the wrong type fails at composition, and
`check_config` rejects values that are well-typed but inconsistent before any process
group starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from megallm.model.config import ModelConfig


@dataclass
class ParallelConfig:
    tp: int = 1  # tensor-parallel degree
    pp: int = 1  # pipeline-parallel degree
    zero_stage: int = 0  # DeepSpeed ZeRO stage for the data-parallel ranks: 0, 1, 2 or 3


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay to min_lr_ratio * lr."""

    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1  # not applied to norms (1-D weights)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps of the run (the LR schedule's length)
    seq_len: int = 2048
    global_batch_tokens: int = 524288  # tokens per optimizer step over all data-parallel ranks
    micro_batch_size: int = 4  # sequences per rank per forward pass
    seed: int = 1234
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU), bf16, fp32
    eval_every: int = 200  # steps between held-out evaluations; 0 disables
    eval_batches: int = 8  # micro-batches per rank per evaluation
    # "auto": continue from the newest complete checkpoint in the run's checkpoint folder
    # if there is one; "none": start fresh; or a path to one checkpoint folder.
    resume: str = "auto"
    stop_at_step: int = 0  # leave the loop after this step (with a checkpoint); 0: run all steps
    dry_run: bool = False  # build on the meta device, print size/FLOPs/memory, exit
    dry_run_world_size: Optional[int] = None  # world size the dry run estimates for (default: this one)


@dataclass
class DataConfig:
    path: str = "data/stdlib"  # folder written by tools/prepare_data.py (manifest.json + shards)
    tokenizer: Optional[str] = None  # tokenizer.json to check against the manifest; default: the corpus's own
    train_split: str = "train"
    val_split: str = "val"


@dataclass
class CheckpointConfig:
    every: int = 500  # steps between checkpoints; the last step is always saved; 0: only the last
    keep_last: int = 3  # complete checkpoints kept (older ones are deleted); 0 keeps all
    dir: Optional[str] = None  # default: <run_dir>/checkpoints


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "megallm"
    mode: str = "offline"  # offline needs no network or account; `wandb sync` uploads later
    entity: Optional[str] = None


@dataclass
class LoggingConfig:
    every: int = 10  # steps between console / JSONL records
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class RunConfig:
    model: ModelConfig = MISSING  # chosen with +model=NAME (conf/model/NAME.yaml)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    run_dir: str = "runs/default"  # metrics, checkpoints and the resolved config go here


class ConfigError(ValueError):
    """A configuration mistake the user can fix; its message is one line saying how."""


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
    problems = list(cfg.model.check())
    p = cfg.parallel
    if p.zero_stage not in (0, 1, 2, 3):
        problems.append(f"parallel.zero_stage must be 0, 1, 2 or 3, got {p.zero_stage}")
    if p.tp != 1 or p.pp != 1:
        problems.append("tensor and pipeline parallelism are not available yet: set parallel.tp=1 parallel.pp=1")
    if world_size % (p.tp * p.pp):
        problems.append(f"world size {world_size} is not divisible by parallel.tp x parallel.pp = {p.tp * p.pp}")
    t = cfg.train
    for name in ("steps", "seq_len", "global_batch_tokens", "micro_batch_size"):
        if getattr(t, name) <= 0:
            problems.append(f"train.{name} must be positive, got {getattr(t, name)}")
    if t.precision not in ("auto", "bf16", "fp32"):
        problems.append(f"train.precision must be auto, bf16 or fp32, got {t.precision!r}")
    if t.stop_at_step < 0 or t.stop_at_step > t.steps:
        problems.append(f"train.stop_at_step={t.stop_at_step} must be between 0 and train.steps={t.steps}")
    if cfg.optim.warmup_steps < 0 or not 0 <= cfg.optim.min_lr_ratio <= 1:
        problems.append("optim.warmup_steps must be >= 0 and optim.min_lr_ratio within [0, 1]")
    if cfg.logging.wandb.mode not in ("offline", "online", "disabled"):
        problems.append(f"logging.wandb.mode must be offline, online or disabled, got {cfg.logging.wandb.mode!r}")
    if problems:
        raise ConfigError(problems[0])
    if not t.dry_run:
        batch_layout(t, world_size // (p.tp * p.pp))
