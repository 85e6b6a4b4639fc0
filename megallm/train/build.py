"""A training run put together from its config: what `launch/pretrain.py` trains (and, given
other data, what `launch/finetune.py` trains: `assemble_trainer`).

`build_trainer` checks the checkpoint it would resume from before anything is built or
written, seeds, builds the engine (weights drawn from per-layer seeds), resumes it,
and hands the loop its callbacks: metrics and throughput, evaluation, checkpoints,
sample traces, and on rank 0 the console, JSONL and W&B loggers.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from megallm.checkpoint.state import RunState, check_compatible, read_state
from megallm.checkpoint.verify import choose_resume_checkpoint
from megallm.config import ConfigError, RunConfig, batch_layout, config_from_yaml, resolved_precision
from megallm.data.corpus import Corpus
from megallm.data.loader import EvalBatches, TrainBatches
from megallm.data.masking import MaskingRule
from megallm.data.mixture import Mixture, history_change
from megallm.data.shards import Manifest
from megallm.engine.engine import ParallelEngine
from megallm.engine.objective import Objective, StepObjective
from megallm.errors import MegallmError
from megallm.metrics.throughput import device_peak_flops
from megallm.model.flops import flops_per_token, parameter_count
from megallm.optim.schedule import schedule_change
from megallm.parallel.distributed import DistContext, agree
from megallm.run_layout import RUN_CONFIG_FILE
from megallm.train.callbacks import (
    Callback,
    Checkpointer,
    ConsoleLogger,
    Evaluator,
    JsonlLogger,
    NanGuard,
    PreemptionHandler,
    SampleTrace,
    SpeedMonitor,
    TrainMetrics,
    WandbLogger,
)
from megallm.train.callbacks.loggers import wandb_config
from megallm.train.run_folder import RunFolder, write_failure
from megallm.train.run_lock import RunLock
from megallm.train.trainer import Trainer, TrainingBatches


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class RunData:
    """What a training job reads and how it is scored, besides its config: pretraining's corpus
    (`build_trainer`) or fine-tuning's labelled files (megallm.finetune)."""

    objective: StepObjective[Any]  # turns micro-batches into model inputs (megallm.engine.objective)
    open_batches: Callable[[int], TrainingBatches[Any]]  # consumed samples -> the rank's batches from there
    evaluator: Callback  # held-out evaluation
    tokenizer_sha256: str
    tokenizer_files: Optional[dict]  # {name: text} saved with each checkpoint (rank 0), or None
    # Called on a fresh start (nothing resumed) with the engine: e.g. a fine-tuning's pretrained weights.
    initialize: Optional[Callable[[ParallelEngine], None]] = None


def check_start(cfg: RunConfig, data: Corpus | Mixture) -> None:
    """Before any process group starts, what the config alone does not say: the run's folders can be
    created and written, each split of each source holds enough windows of train.seq_len tokens
    for its data order, and no source is read more often than its max_epochs. Raises a
    MegallmError in one line."""
    RunFolder.checked(cfg)
    mixture, seq_len = Mixture.of(data), cfg.train.seq_len
    mixture.orders(cfg.data.train_split, seq_len, cfg.data.streams, seed=0)
    mixture.orders(cfg.data.val_split, seq_len, streams=1, seed=0)
    global_sequences, _ = batch_layout(cfg.train, 1)
    mixture.check_epochs(cfg.data.train_split, seq_len, cfg.data.streams, cfg.train.seed,
                         total_samples=cfg.train.steps * global_sequences)


def build_trainer(cfg: RunConfig, config_yaml: str, corpus: Corpus | Mixture, ctx: DistContext,
                  extra_callbacks: Optional[list[Callback]] = None) -> Trainer:
    """The pretraining Trainer of this rank on `corpus` (data.path's, or data.sources' mixture), resumed if
    train.resume finds a checkpoint. `extra_callbacks` run beside the standard ones (tests and tools
    plug in here)."""
    mixture = Mixture.of(corpus)
    corpus = mixture.primary
    val_batches = {source.name: EvalBatches(source.corpus, cfg.data.val_split, seq_len=cfg.train.seq_len,
                                            micro_batch_size=cfg.train.micro_batch_size, dp_rank=ctx.coords.dp,
                                            dp=ctx.dims.dp, device=ctx.device) for source in mixture.sources}
    weights = {source.name: source.weight for source in mixture.sources}
    model_flops = flops_per_token(cfg.model, cfg.train.seq_len)
    data = RunData(objective=run_objective(cfg, corpus.manifest),
                   open_batches=lambda consumed: _open_train_batches(cfg, mixture, ctx, consumed),
                   evaluator=Evaluator(val_batches, cfg.train.eval_every, cfg.train.eval_batches, model_flops,
                                       weights=weights),
                   tokenizer_sha256=corpus.manifest.tokenizer_sha256,
                   tokenizer_files=corpus.tokenizer_files() if ctx.is_main else None)
    return assemble_trainer(cfg, config_yaml, ctx, data, extra_callbacks)


def assemble_trainer(cfg: RunConfig, config_yaml: str, ctx: DistContext, data: RunData,
                     extra_callbacks: Optional[list[Callback]] = None) -> Trainer:
    """The Trainer of this rank for `data`: the run folder locked, the checkpoint to resume from checked
    before anything is built, the engine, the callbacks, and the resume (or `data.initialize`).
    A run refused on the way (an incompatible checkpoint, W&B that cannot start, ...) leaves no
    folder, lock or config behind that it created; config.yaml is written last."""
    folder = RunFolder.of(cfg)
    locks = _lock_run_folder(folder, ctx)  # before anything in the folder is read or written
    try:
        trainer = _assemble(cfg, config_yaml, ctx, data, folder, locks, extra_callbacks)
        _on_main_rank(ctx, folder, lambda: folder.write_config(config_yaml))
    except BaseException:
        for lock in reversed(locks):
            lock.abandon()
        raise
    return trainer


def _assemble(cfg: RunConfig, config_yaml: str, ctx: DistContext, data: RunData, folder: RunFolder,
              locks: list[RunLock], extra_callbacks: Optional[list[Callback]]) -> Trainer:
    precision = resolved_precision(cfg.train.precision, ctx.device.type == "cuda")
    global_sequences, grad_accum = batch_layout(cfg.train, ctx.dims.dp)
    state = RunState(layout=ctx.dims, model=cfg.model.to_dict(), tokenizer_sha256=data.tokenizer_sha256,
                     seq_len=cfg.train.seq_len, data_streams=cfg.data.streams)
    resume_from = choose_resume_checkpoint(cfg.train.resume, folder.checkpoints, cfg.checkpoint.on_damaged,
                                           distributed=True, say=lambda line: ctx.is_main and print(line, flush=True))
    if resume_from is not None:
        saved_state = read_state(resume_from)
        check_compatible(saved_state, state, resume_from)
        _check_data_history(cfg, resume_from, saved_state.step)

    seed_everything(cfg.train.seed)
    engine = ParallelEngine(cfg, ctx, precision, objective=data.objective)
    callbacks = _callbacks(cfg, config_yaml, ctx, folder, precision, data)
    callbacks += _on_main_rank(ctx, folder, lambda: _loggers(cfg, ctx, folder, precision)) or []
    callbacks += [*(extra_callbacks or []), *locks]
    trainer = Trainer(engine, state, data.open_batches,
                      steps=cfg.train.steps, stop_at_step=cfg.train.stop_at_step, log_every=cfg.logging.every,
                      seq_len=cfg.train.seq_len, global_sequences=global_sequences, grad_accum=grad_accum,
                      callbacks=callbacks)
    if resume_from is not None:
        saved = trainer.restore(resume_from)
        trainer.say(f"resumed from {resume_from} at step {saved.step} "
                    f"(sample {saved.consumed_samples:,} of the data order)")
        change = _schedule_change(cfg, resume_from, saved.step)
        if change:
            trainer.say(f"note: the LR schedule differs from the checkpoint's: {change}")
    elif data.initialize is not None:
        data.initialize(engine)
    params = parameter_count(cfg.model)
    trainer.say(
        f"model {cfg.model.name}: {params.total / 1e6:.1f}M parameters | "
        f"{flops_per_token(cfg.model, cfg.train.seq_len) / 1e6:.1f} MFLOP/token | {ctx.world_size} rank(s) "
        f"({ctx.backend}, {precision}, {ctx.dims}) | "
        f"{global_sequences} x {cfg.train.seq_len} tokens per step, grad accumulation {grad_accum}"
    )
    return trainer


def run_objective(cfg: RunConfig, manifest: Manifest) -> Objective:
    """What the run's windows train the model to predict (train.objective, data.document_masking)."""
    start = manifest.segment_start_id if cfg.data.document_masking else None
    if cfg.train.objective != "mlm":
        return Objective(segment_start_id=start)
    m = cfg.mlm
    framing = tuple(t for t in (manifest.eos_id, manifest.bos_id) if t is not None)
    rule = MaskingRule(m.mask_prob, m.replace_with_mask, m.replace_with_random,
                       mask_id=manifest.require_mask_token(cfg.data.path), vocab_size=manifest.vocab_size,
                       protected_ids=framing)
    return Objective(segment_start_id=start, masking=rule, nsp=m.nsp, seed=cfg.train.seed)


def _check_data_history(cfg: RunConfig, checkpoint: Path, step: int) -> None:
    """Refuse (one line) to resume where this run's mixture would have read the checkpoint's steps otherwise."""
    saved_config = checkpoint / RUN_CONFIG_FILE
    if step == 0 or not saved_config.is_file():
        return
    saved, _ = config_from_yaml(saved_config.read_text())
    change = history_change(saved, cfg, step)
    if change:
        raise ConfigError(change)


def _schedule_change(cfg: RunConfig, checkpoint: Path, step: int) -> Optional[str]:
    """How this run's LR schedule departs from the one `checkpoint` was trained with (None if it continues it)."""
    saved_config = checkpoint / RUN_CONFIG_FILE
    if step == 0 or not saved_config.is_file():  # an imported model: no schedule to continue
        return None
    saved, _ = config_from_yaml(saved_config.read_text())
    return schedule_change(step, (saved.optim, saved.train.steps), (cfg.optim, cfg.train.steps))


def _lock_run_folder(folder: RunFolder, ctx: DistContext) -> list[RunLock]:
    """Collective: rank 0 takes the lock of the run folder, and of checkpoint.dir where that lies
    outside it (two runs saving into one checkpoint folder would mix their checkpoints); every
    rank raises if another run holds one. Rank 0's locks (none on other ranks)."""
    locks, problem = [], None
    if ctx.is_main:
        shared = [(folder.root, "run_dir")]
        if folder.keeps_checkpoints_elsewhere:
            shared.append((folder.checkpoints, "checkpoint.dir"))
        try:
            for root, setting in shared:
                locks.append(RunLock(root, setting).acquire())
        except ConfigError as error:
            problem = str(error)
            for lock in reversed(locks):
                lock.abandon()
    problem = agree(problem)
    if problem:
        raise ConfigError(problem)
    for lock in locks:
        if lock.took_over:
            print(f"note: took over the lock of a run that ended (pid {lock.took_over.get('pid')} on "
                  f"{lock.took_over.get('host')})", flush=True)
    return locks


def _callbacks(cfg: RunConfig, config_yaml: str, ctx: DistContext, folder: RunFolder, precision: str,
               data: RunData) -> list[Callback]:
    model_flops = flops_per_token(cfg.model, cfg.train.seq_len)  # training FLOPs per token
    callbacks: list[Callback] = [
        TrainMetrics(model_flops),
        SpeedMonitor(model_flops, device_peak_flops(ctx.device, precision)),
        data.evaluator,
        Checkpointer(folder.checkpoints, cfg.checkpoint.every, cfg.checkpoint.keep_last, config_yaml, cfg.model,
                     cfg.checkpoint.consolidated, data.tokenizer_files,
                     save_last=cfg.checkpoint.save_last, at_steps=cfg.checkpoint.at_steps),
        NanGuard(cfg.nan_guard, folder.checkpoints, cfg.checkpoint.on_damaged),
        PreemptionHandler(),
    ]
    if cfg.data.trace_samples and ctx.coords.tp == 0 and ctx.coords.pp == 0:
        callbacks.append(SampleTrace(folder.sample_trace(ctx.coords.dp)))
    return callbacks


def _loggers(cfg: RunConfig, ctx: DistContext, folder: RunFolder, precision: str) -> list[Callback]:
    """Rank 0's loggers: console, metrics.jsonl and, where enabled, W&B."""
    loggers = [ConsoleLogger(), JsonlLogger(folder.metrics)]
    settings = cfg.logging.wandb.resolved(os.environ)  # null values follow WANDB_MODE, WANDB_PROJECT, ...
    if settings.enabled and settings.mode != "disabled":
        import wandb  # deferred: only runs with W&B enabled need it

        try:
            loggers.append(WandbLogger(settings, folder.root, wandb_config(cfg, ctx, precision)))
        except wandb.errors.Error as error:  # no account for online mode, a project it may not write, ...
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ConfigError(f"W&B did not start in mode {settings.mode}: {reason} (logging.wandb.mode=offline "
                              "needs no account)") from None
    return loggers


def _on_main_rank(ctx: DistContext, folder: RunFolder, make: Callable[[], Any]) -> Any:
    """Collective: `make()` on rank 0 (which alone writes the run folder's files), its result there
    (None elsewhere); a set-up error of it (a full filesystem, ...) raised on every rank in one line."""
    result, problem = None, None
    if ctx.is_main:
        try:
            result = make()
        except MegallmError as error:
            problem = str(error)
        except OSError as error:
            problem = write_failure("run_dir", folder.root, error)
    problem = agree(problem)
    if problem:
        raise ConfigError(problem)
    return result


def _open_train_batches(cfg: RunConfig, corpus: Mixture, ctx: DistContext, consumed_samples: int) -> TrainBatches:
    d, train, dp = cfg.data, cfg.train, ctx.dims.dp
    if ctx.is_main and d.streams % (dp * max(1, d.num_workers)):
        print(f"note: data.streams={d.streams} is not a multiple of DP x data.num_workers = "
              f"{dp} x {max(1, d.num_workers)}: loader workers share streams and read some shards "
              "more than once (the samples are the same)", flush=True)
    return TrainBatches(corpus, d.train_split, seq_len=train.seq_len, micro_batch_size=train.micro_batch_size,
                        streams=d.streams, seed=train.seed, dp_rank=ctx.coords.dp, dp=dp,
                        consumed_samples=consumed_samples, num_workers=d.num_workers, prefetch=d.prefetch,
                        skip_bad_shards=d.skip_bad_shards, device=ctx.device)
