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

from megallm.model.config import RECOMPUTE_MODES, ModelConfig


@dataclass
class ParallelConfig:
    """Layout of the ranks: world = tp x pp x dp, dp being what is left over.

    Ranks are ordered tensor-parallel fastest, then data-parallel, then pipeline
    (megatron-core's order, which DeepSpeed's pipeline topology shares), so keep tp
    within a node.
    """

    tp: int = 1  # tensor-parallel degree (megatron-core layers): heads, FFN and vocabulary split
    pp: int = 1  # pipeline-parallel degree (DeepSpeed PipelineModule): layers split into stages
    zero_stage: int = 0  # DeepSpeed ZeRO stage over the data-parallel ranks: 0, 1, 2 or 3 (0 or 1 with pp > 1)
    # Megatron sequence parallelism (needs tp > 1 and NCCL: gloo has no reduce-scatter).
    sequence_parallel: bool = False
    # How pipeline stages are cut: "layers" balances transformer blocks, "parameters" balances parameter counts.
    pipeline_partition: str = "layers"


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
    # Micro-batches per evaluation over all data-parallel ranks (rounded up to a multiple of their
    # number): the same held-out sequences for every layout, so val_loss compares across runs.
    eval_batches: int = 8
    # "auto": continue from the newest complete checkpoint in the run's checkpoint folder
    # if there is one; "none": start fresh; or a path to one checkpoint folder.
    resume: str = "auto"
    stop_at_step: int = 0  # leave the loop after this step (with a checkpoint); 0: run all steps
    # Activation checkpointing: "none"; "full" reruns each block in backward (least memory);
    # "selective" reruns only the core attention (its s x s scores dominate without flash-attn).
    activation_checkpointing: str = "none"
    dry_run: bool = False  # build on the meta device, print size/FLOPs/memory, exit
    dry_run_world_size: Optional[int] = None  # world size the dry run estimates for (default: this one)


@dataclass
class DataConfig:
    path: str = "data/stdlib"  # folder written by tools/prepare_data.py (manifest.json + shards)
    tokenizer: Optional[str] = None  # tokenizer.json to check against the manifest; default: the corpus's own
    train_split: str = "train"
    val_split: str = "val"
    # Packed documents attend only within themselves and positions restart per document
    # (the end-of-document token starts the next one); false = plain causal over the whole window.
    document_masking: bool = True
    # Reading order (megallm.data.order): the epoch's sequences are cut into this many ranges read in
    # parallel, and batches interleave them. Fixed for a run: the data position is counted in this order,
    # so it may resume on any number of data-parallel ranks; a multiple of DP x num_workers reads each shard
    # once per epoch.
    streams: int = 64
    num_workers: int = 2  # loader processes per data-parallel rank (0: read in the training process)
    prefetch: int = 64  # samples each loader worker prepares ahead
    # A shard that is unreadable, truncated or holds ids beyond the vocabulary stops the run with its name;
    # true: replace it by the next readable shard, count it (metric skipped_shards) and go on.
    skip_bad_shards: bool = False
    # Write <run_dir>/samples/dp_rank_R.jsonl: each step's global sample indices and token-id hashes.
    trace_samples: bool = False


@dataclass
class CheckpointConfig:
    every: int = 500  # steps between checkpoints; the last step is always saved; 0: only the last
    keep_last: int = 3  # complete checkpoints kept (older ones are deleted); 0 keeps all
    dir: Optional[str] = None  # default: <run_dir>/checkpoints
    # Also write consolidated.pt: the full model in canonical names, gathered from every
    # rank into rank 0's CPU memory (costly for large models; export can do it offline).
    consolidated: bool = False


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
    problems += _layout_problems(cfg, world_size)
    t = cfg.train
    for name in ("steps", "seq_len", "global_batch_tokens", "micro_batch_size"):
        if getattr(t, name) <= 0:
            problems.append(f"train.{name} must be positive, got {getattr(t, name)}")
    if t.activation_checkpointing not in RECOMPUTE_MODES:
        problems.append(f"train.activation_checkpointing must be none, full or selective, "
                        f"got {t.activation_checkpointing!r}")
    if t.precision not in ("auto", "bf16", "fp32"):
        problems.append(f"train.precision must be auto, bf16 or fp32, got {t.precision!r}")
    if t.stop_at_step < 0 or t.stop_at_step > t.steps:
        problems.append(f"train.stop_at_step={t.stop_at_step} must be between 0 and train.steps={t.steps}")
    if cfg.optim.warmup_steps < 0 or not 0 <= cfg.optim.min_lr_ratio <= 1:
        problems.append("optim.warmup_steps must be >= 0 and optim.min_lr_ratio within [0, 1]")
    d = cfg.data
    if d.streams < 1 or d.num_workers < 0 or d.prefetch < 1:
        problems.append(f"data.streams and data.prefetch must be >= 1 and data.num_workers >= 0, got "
                        f"streams={d.streams} prefetch={d.prefetch} num_workers={d.num_workers}")
    if cfg.logging.wandb.mode not in ("offline", "online", "disabled"):
        problems.append(f"logging.wandb.mode must be offline, online or disabled, got {cfg.logging.wandb.mode!r}")
    if problems:
        raise ConfigError(problems[0])
    batch_layout(t, planned_world_size(cfg, world_size) // (p.tp * p.pp))


def planned_world_size(cfg: RunConfig, world_size: int) -> int:
    """The ranks the run is for: this launch's, or train.dry_run_world_size in a dry run."""
    if cfg.train.dry_run and cfg.train.dry_run_world_size:
        return cfg.train.dry_run_world_size
    return world_size


def _layout_problems(cfg: RunConfig, world_size: int) -> list[str]:
    """What stops this parallel layout, before any process group starts."""
    p, m = cfg.parallel, cfg.model
    if p.tp < 1 or p.pp < 1:
        return [f"parallel.tp and parallel.pp must be >= 1, got tp={p.tp} pp={p.pp}"]
    problems = []
    if p.tp > 1:
        if m.num_kv_heads % p.tp:
            problems.append(
                f"parallel.tp={p.tp} does not divide model.num_kv_heads={m.num_kv_heads}: each tensor-parallel "
                f"rank must own whole key/value heads; use a tp that divides {m.num_kv_heads}")
        if m.num_heads % p.tp or m.ffn_hidden_size % p.tp:
            problems.append(f"parallel.tp={p.tp} must divide model.num_heads={m.num_heads} and "
                            f"model.ffn_hidden_size={m.ffn_hidden_size}")
    if p.pp > m.num_layers:
        problems.append(f"parallel.pp={p.pp} is more stages than model.num_layers={m.num_layers}")
    if p.pp > 1 and p.zero_stage >= 2:
        problems.append(
            f"parallel.zero_stage={p.zero_stage} cannot be combined with parallel.pp={p.pp}: DeepSpeed's pipeline "
            "engine accumulates gradients over micro-batches itself, which ZeRO-2/3 gradient partitioning does "
            "not support; use parallel.zero_stage=1 (or 0) with pipeline parallelism")
    if p.sequence_parallel and p.tp == 1:
        problems.append("parallel.sequence_parallel=true needs parallel.tp > 1 (it splits the sequence over "
                        "the tensor-parallel ranks)")
    if p.pipeline_partition not in ("layers", "parameters"):
        problems.append(f"parallel.pipeline_partition must be layers or parameters, got {p.pipeline_partition!r}")
    world = planned_world_size(cfg, world_size)
    if world % (p.tp * p.pp):
        problems.append(f"{world} rank(s) cannot be split into parallel.tp x parallel.pp = {p.tp} x {p.pp} "
                        f"groups; launch a multiple of {p.tp * p.pp} ranks or change the layout")
    return problems
