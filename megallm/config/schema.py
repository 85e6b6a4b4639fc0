"""RunConfig: the typed Hydra schema for a training run.

Each concern owns a dataclass (the model's lives in megallm.model.config); `RunConfig`
nests them. Hydra merges `conf/config.yaml` and the chosen `conf/model/*.yaml` onto this
schema (megallm.config.compose), so an unknown key, a value of the wrong type or a word
outside its field's closed set (a `Choice` enum, declared here above the section that uses
it) fails at composition; megallm.config.checks rejects values that are well-typed but
inconsistent before any process group starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, Mapping, Optional, cast, get_args

from omegaconf import MISSING

from megallm.errors import ConfigError
from megallm.model.config import Choice, KernelConfig, ModelConfig, Recompute
from megallm.parallel.dims import ParallelDims


class PipelinePartition(Choice):
    """How pipeline stages are cut (parallel.pipeline_partition)."""

    layers = "layers"  # balances transformer blocks
    parameters = "parameters"  # balances parameter counts


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
    pipeline_partition: PipelinePartition = PipelinePartition.layers

    def dims(self, world_size: int) -> ParallelDims:
        """The layout of `world_size` ranks (checked by megallm.config.checks first)."""
        return ParallelDims.for_world(world_size, self.tp, self.pp, self.zero_stage)


class LRSchedule(Choice):
    """optim.schedule (megallm.optim.schedule)."""

    cosine = "cosine"
    wsd = "wsd"


class DecayShape(Choice):
    """optim.decay_shape: the shape of a WSD run's final decay (megallm.optim.schedule.DECAY_SHAPES)."""

    vars()["1-sqrt"] = "1-sqrt"  # Hägele et al.'s best; not an identifier, so declared by name (see Choice)
    linear = "linear"
    cosine = "cosine"


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then cosine decay or warmup-stable-decay down to min_lr_ratio * lr
    (megallm.optim.schedule)."""

    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # the LR at the end of the decay, as a fraction of lr
    warmup_steps: int = 100
    # "cosine": decay over the whole run after warmup; "wsd": warmup-stable-decay, the peak held until the
    # final decay (a run can then be extended, and cool-downs branched from its stable phase).
    schedule: LRSchedule = LRSchedule.cosine
    decay_fraction: float = 0.2  # wsd: the share of train.steps spent decaying (Hägele et al. 2024 use 0.2)
    decay_steps: int = 0  # wsd: the decay's length in steps; 0 takes decay_fraction
    decay_shape: DecayShape = DecayShape["1-sqrt"]  # wsd: the decay's shape (DecayShape)

    def wsd_decay_steps(self, total_steps: int) -> int:
        """Steps of a WSD run's final decay: decay_steps, else decay_fraction of the run's `total_steps`."""
        return self.decay_steps if self.decay_steps > 0 else max(1, round(self.decay_fraction * total_steps))

    def decay_start(self, total_steps: int) -> int:
        """The first step (0-based) whose LR is below the peak's plateau: for WSD the end of the stable phase."""
        if self.schedule == LRSchedule.wsd:
            return max(self.warmup_steps, total_steps - self.wsd_decay_steps(total_steps))
        return self.warmup_steps
    weight_decay: float = 0.1  # not applied to norms (1-D weights)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    # torch's fused AdamW kernel (one launch for all tensors; CUDA, and CPU in fp32) instead of foreach.
    fused: bool = False


@dataclass
class MLMConfig:
    """Masked language modelling (train.objective=mlm), as BERT (Devlin et al. 2019): of each window,
    `mask_prob` of the tokens are selected (never an end- or start-of-document token); of those,
    `replace_with_mask` become the mask token, `replace_with_random` a random token, and the rest keep
    their token. The loss is the cross-entropy on the selected positions only (megallm.data.masking).
    Which tokens are selected depends only on (train.seed, the window's global sample index): the
    same in every layout and after a resume."""

    mask_prob: float = 0.15
    replace_with_mask: float = 0.8
    replace_with_random: float = 0.1
    # Next-sentence prediction: each window's second half is, for half the windows, swapped for another
    # window's second half; a head on the first position says which (its loss is added to the MLM loss).
    # Needs data.document_masking=false (the halves must see each other) and train.micro_batch_size >= 2.
    nsp: bool = False


class FinetuneTask(Choice):
    """finetune.task: what a fine-tuning trains (megallm.finetune)."""

    classify = "classify"  # rows {text, label}: a classification head
    sft = "sft"  # rows {prompt, response}: next-token loss on the responses


class FinetunePooling(Choice):
    """finetune.pooling: auto, or one of model.pooling's choices (megallm.model.config.Pooling)."""

    auto = "auto"  # last for a decoder, mean for an encoder
    last = "last"
    mean = "mean"
    first = "first"


@dataclass
class FinetuneConfig:
    """Fine-tuning (launch/finetune.py; megallm.finetune): a pretrained model trained further on labelled data.

    task "classify": rows `{text, label}` (JSON lines or CSV); a head of one output per label replaces the
    language-model output and reads the pooled final hidden states; validation reports accuracy and
    macro-F1. task "sft": rows `{prompt, response}`; next-token loss on the response tokens only, examples
    packed into windows of train.seq_len with document masking (data.document_masking).
    """

    task: FinetuneTask = FinetuneTask.classify
    init: Optional[str] = None  # the pretrained model: a megallm checkpoint (any layout, a run folder) or HF folder
    # false: the same model (shape, tokenizer) from random initial weights: the baseline that shows what
    # pretraining brought to the task.
    pretrained: bool = True
    train_file: Optional[str] = None  # .jsonl / .json (one JSON object per line) or .csv with a header
    # Validation rows; null: `val_fraction` of train_file's rows, chosen by a hash of each row's text.
    val_file: Optional[str] = None
    val_fraction: float = 0.1
    text_field: str = "text"
    label_field: str = "label"
    prompt_field: str = "prompt"
    response_field: str = "response"
    # classify: what the head reads: last (the last token), mean (all tokens), first (position 0) or auto:
    # last for a decoder, mean for an encoder (model.bidirectional).
    pooling: FinetunePooling = FinetunePooling.auto


class TrainingObjective(Choice):
    """train.objective: what the windows train the model to predict (megallm.engine.objective)."""

    causal = "causal"  # next-token prediction (a decoder)
    mlm = "mlm"  # masked language modelling (an encoder)


class Precision(Choice):
    """train.precision: the dtype of weights and activations (see resolved_precision)."""

    auto = "auto"  # bf16 on GPU, fp32 on CPU
    bf16 = "bf16"
    fp32 = "fp32"


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps of the run (the LR schedule's length)
    seq_len: int = 2048  # tokens per window: at least 2, at most model.max_position_embeddings where that is set
    # "causal": next-token prediction (a decoder); "mlm": masked language modelling (an encoder: the model
    # attends both ways, model.bidirectional; settings under `mlm`).
    objective: TrainingObjective = TrainingObjective.causal
    global_batch_tokens: int = 524288  # tokens per optimizer step over all data-parallel ranks
    micro_batch_size: int = 4  # sequences per rank per forward pass
    seed: int = 1234
    precision: Precision = Precision.auto  # auto (bf16 on GPU, fp32 on CPU), bf16, fp32; see resolved_precision
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
    activation_checkpointing: Recompute = Recompute.none
    dry_run: bool = False  # build on the meta device, print size/FLOPs/memory, exit
    dry_run_world_size: Optional[int] = None  # world size the dry run estimates for (default: this one)


@dataclass
class SourceConfig:
    """One corpus of a data mixture (data.sources.NAME): a folder tools/prepare_data.py wrote, its weight
    (any scale: the weights are normalised) and how often it may be read over the run (null: no cap)."""

    path: str = ""
    weight: float = 1.0
    max_epochs: Optional[float] = None


@dataclass
class DataConfig:
    path: str = "data/stdlib"  # folder written by tools/prepare_data.py (manifest.json + shards)
    # A mixture instead of data.path: named corpora that share one tokenizer, each with SourceConfig's
    # settings, e.g. +data.sources.code.path=data/code +data.sources.code.weight=0.3
    # +data.sources.prose.path=data/prose; each sample's source is a pure function of (weights,
    # train.seed, sample index) (megallm.data.mixture). Read through `source_settings`.
    sources: dict[str, Any] = field(default_factory=dict)
    # Data stages: the mixture changes after given steps, e.g. "+data.stages=[{at_step: 800, weights:
    # {code: 0.5, prose: 0.5}}]" (a stage names the weights of its sources; the others get 0 in it).
    stages: list[Any] = field(default_factory=list)
    # An annealing stage from the start of the WSD decay (optim.schedule=wsd): {name: weight}, e.g.
    # +data.anneal.code=0.7 +data.anneal.prose=0.3; a sweep axis for "which anneal mix".
    anneal: dict[str, Any] = field(default_factory=dict)
    # A source used up to its max_epochs before the run ends: false refuses the run before it starts;
    # true drops it from that step on and the others share its weight (an automatic stage).
    renormalize: bool = False
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

    def stage_settings(self) -> list[tuple[int | str, dict[str, float]]]:
        """data.stages, then data.anneal, as (the step after which it applies, or "decay"; {source: weight});
        ConfigError (one line) for a malformed stage. Steps and names are checked by megallm.config.checks."""
        stages: list[tuple[int | str, dict[str, float]]] = []
        for i, stage in enumerate(self.stages):
            where = f"data.stages[{i}]"
            if not isinstance(stage, Mapping) or set(stage) != {"at_step", "weights"}:
                raise ConfigError(f"{where} must be {{at_step: STEP, weights: {{SOURCE: WEIGHT, ...}}}}, got {stage!r}")
            at = stage["at_step"]
            if isinstance(at, bool) or not isinstance(at, int):
                raise ConfigError(f"{where}.at_step must be a step number, got {at!r}")
            stages.append((at, _weights(stage["weights"], f"{where}.weights")))
        if self.anneal:
            stages.append(("decay", _weights(self.anneal, "data.anneal")))
        return stages

    def source_settings(self) -> dict[str, SourceConfig]:
        """data.sources as SourceConfigs, in the order given; ConfigError (one line) for a source that is
        not a mapping, an unknown setting or a value of the wrong type."""
        known = {f.name: f for f in fields(SourceConfig)}
        settings = {}
        for name, given in self.sources.items():
            if not isinstance(given, Mapping):
                raise ConfigError(f"data.sources.{name} must hold settings ({', '.join(known)}), got {given!r}")
            unknown = [key for key in given if key not in known]
            if unknown:
                raise ConfigError(f"data.sources.{name}.{unknown[0]} is not a setting of a source; the settings are "
                                  f"{', '.join(known)}")
            values: dict[str, Any] = {}
            for key, value in given.items():
                wanted = float if key in ("weight", "max_epochs") else str
                if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                              if wanted is float else isinstance(value, str)):
                    raise ConfigError(f"data.sources.{name}.{key} must be a {'number' if wanted is float else 'path'}, "
                                      f"got {value!r}")
                values[key] = wanted(value) if value is not None else None
            settings[str(name)] = SourceConfig(**values)
        return settings


def _weights(given: Any, where: str) -> dict[str, float]:
    if not isinstance(given, Mapping) or not given:
        raise ConfigError(f"{where} must map source names to weights, got {given!r}")
    for name, weight in given.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"{where}.{name} must be a number, got {weight!r}")
    return {str(name): float(weight) for name, weight in given.items()}


class OnDamaged(Choice):
    """checkpoint.on_damaged: what a resume does with a newest checkpoint that fails verification."""

    fallback = "fallback"
    stop = "stop"


@dataclass
class CheckpointConfig:
    every: int = 500  # steps between checkpoints; the last step is always saved; 0: only the last
    save_last: bool = True  # false: not the planned last step either (benchmarks); a stop on a signal still saves
    keep_last: int = 3  # complete checkpoints kept (older ones are deleted); 0 keeps all
    # Steps saved besides every `every`, and kept whatever keep_last says: e.g. the points a WSD run's
    # cool-downs branch from (launch/sweep.py sets them).
    at_steps: list[int] = field(default_factory=list)
    dir: Optional[str] = None  # default: <run_dir>/checkpoints
    # Also write consolidated.pt: the full model in canonical names, gathered from every
    # rank into rank 0's CPU memory (costly for large models; export can do it offline).
    consolidated: bool = False
    # A newest checkpoint that fails verification (a file missing, truncated or altered, a damaged
    # megallm_state.json): "fallback" reports it, moves it aside (<name>.damaged) and resumes from the
    # one before; "stop" stops the run with the reason.
    on_damaged: OnDamaged = OnDamaged.fallback


class NanPolicy(Choice):
    """nan_guard.policy (megallm.train.callbacks.nan_guard)."""

    stop = "stop"
    skip = "skip"
    rollback = "rollback"


@dataclass
class NanGuardConfig:
    """A step whose gradient norm (and so loss) is NaN or infinite: its update is never applied
    (megallm.engine), and then, by `policy`:
    - stop: the run exits with code 3 naming the step; the newest checkpoint stays as it is;
    - skip: training goes on with the next batch (the step counts, the LR schedule waits);
    - rollback: the newest checkpoint is loaded again and training repeats from it, skipping
      the bad step's batch when it comes.
    Each such step is logged (kind "nonfinite": its step and global sample range)."""

    policy: NanPolicy = NanPolicy.stop
    max_events: int = 10  # non-finite steps that skip or rollback handle; the next one stops the run
    # Steps whose batches are read but not trained on (no update, e.g. data behind a loss spike):
    # "A-B" (inclusive) or "N", e.g. nan_guard.skip_steps=[1200-1300,1450].
    skip_steps: list[str] = field(default_factory=list)


WandbMode = Literal["offline", "online", "disabled"]
WANDB_MODES: tuple[str, ...] = get_args(WandbMode)
LEGACY_WANDB_MODES = {"dryrun": "offline", "run": "online"}  # W&B's older names, still read from WANDB_MODE


def wandb_mode(value: str) -> Optional[WandbMode]:
    """`value` as one of W&B's modes (the legacy dryrun and run read as offline and online), None if it
    is not one (megallm.config.checks refuses those before a run starts)."""
    value = LEGACY_WANDB_MODES.get(value, value)
    return cast(WandbMode, value) if value in WANDB_MODES else None


@dataclass
class WandbConfig:
    """W&B logging on rank 0 (megallm.train.callbacks.loggers.WandbLogger).

    A value set here wins; a null one follows W&B's environment variable, else megallm's default:
    mode WANDB_MODE else offline (no network, no account; `wandb sync` uploads later), project
    WANDB_PROJECT else megallm, entity WANDB_ENTITY else the account's default, name WANDB_NAME else the
    run folder's name, group WANDB_RUN_GROUP, tags WANDB_TAGS (comma-separated; an empty list here
    is unset), notes WANDB_NOTES. One run folder is one W&B run: its id is kept in
    `<run_dir>/wandb_run_id`, so a resumed or requeued job continues it.
    """

    enabled: bool = False
    mode: Optional[str] = None  # online, offline or disabled
    project: Optional[str] = None
    entity: Optional[str] = None
    name: Optional[str] = None
    group: Optional[str] = None  # e.g. one scaling study's runs
    tags: list[str] = field(default_factory=list)
    notes: Optional[str] = None

    def resolved(self, environ: Mapping[str, str]) -> WandbConfig:
        """This config with each unset value taken from `environ` (os.environ), else the default
        (name stays None where WANDB_NAME is unset: the logger names the run after its folder).
        W&B's legacy WANDB_MODE values dryrun and run read as offline and online."""
        def pick(value: Optional[str], variable: str, default: Optional[str] = None) -> Optional[str]:
            return value if value is not None else environ.get(variable) or default

        mode = pick(self.mode, "WANDB_MODE", "offline") or "offline"
        tags = list(self.tags) or [t.strip() for t in environ.get("WANDB_TAGS", "").split(",") if t.strip()]
        return WandbConfig(enabled=self.enabled, mode=LEGACY_WANDB_MODES.get(mode, mode),
                           project=pick(self.project, "WANDB_PROJECT", "megallm"),
                           entity=pick(self.entity, "WANDB_ENTITY"), name=pick(self.name, "WANDB_NAME"),
                           group=pick(self.group, "WANDB_RUN_GROUP"), tags=tags, notes=pick(self.notes, "WANDB_NOTES"))


@dataclass
class DownstreamConfig:
    """Few-shot tasks scored during training (megallm.evaluation.during_training, which
    launch/pretrain.py plugs in): every `every` steps and at the last step, a "downstream" record
    with each task's accuracy beside the validation loss. Each query's k demonstrations are drawn at
    random (by `seed`) from the task's other examples, the same ones at every evaluation."""

    tasks: list[str] = field(default_factory=list)  # task files (JSON lines: megallm.evaluation.tasks)
    every: int = 0  # steps between evaluations; 0: off
    k: int = 0  # demonstrations per query
    limit: Optional[int] = None  # score the first `limit` examples of each task; null: all
    seed: int = 0  # of the random demonstrations
    batch_size: int = 8  # sequences per forward pass
    max_new_tokens: int = 32  # generation tasks: tokens per answer


@dataclass
class LoggingConfig:
    every: int = 10  # steps between console / JSONL records
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class RunConfig:
    model: ModelConfig = MISSING  # chosen with +model=NAME (conf/model/NAME.yaml)
    kernels: KernelConfig = field(default_factory=KernelConfig)  # attention kernel, compile, fused loss
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mlm: MLMConfig = field(default_factory=MLMConfig)  # train.objective=mlm only
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # launch/finetune.py only
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    nan_guard: NanGuardConfig = field(default_factory=NanGuardConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)  # launch/pretrain.py only
    # metrics, checkpoints and the resolved config go here (created if missing; "." for the current directory)
    run_dir: str = "runs/default"


def step_ranges(specs: list[str]) -> list[tuple[int, int]]:
    """nan_guard.skip_steps as inclusive (first, last) step ranges; ValueError for a malformed one."""
    ranges = []
    for spec in specs:
        first, _, last = str(spec).partition("-")
        if not (first.isdigit() and (last or first).isdigit() and 1 <= int(first) <= int(last or first)):
            raise ValueError(spec)
        first_step, last_step = int(first), int(last or first)
        ranges.append((first_step, last_step))
    return ranges


def resolved_precision(precision: str, on_gpu: bool) -> str:
    """train.precision with "auto" resolved (bf16 on GPUs, fp32 on CPUs), as a plain string."""
    if precision == Precision.auto:
        return (Precision.bf16 if on_gpu else Precision.fp32).value
    return Precision(precision).value
