"""The training loop: DeepSpeed engine, micro-batches, evaluation, logging, checkpoints.

`Trainer` owns time (steps, when to evaluate, log and save); the engine owns the model,
optimizer and data-parallel/ZeRO mechanics. Everything a run needs is passed in.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np
import torch

from megallm.checkpoint.state import (
    RunState,
    check_compatible,
    find_resume_checkpoint,
    load_checkpoint,
    read_state,
    save_checkpoint,
)
from megallm.config import RunConfig, batch_layout
from megallm.data.corpus import Corpus
from megallm.data.loader import EvalBatches, TrainBatches
from megallm.metrics.sinks import ConsoleSink, JsonlSink, MetricLogger, WandbSink
from megallm.metrics.throughput import Throughput, device_peak_flops, peak_memory_bytes
from megallm.model.flops import flops_per_token, parameter_count
from megallm.parallel.distributed import DistContext
from megallm.parallel.ds_config import resolve_precision
from megallm.parallel.engine import ParallelEngine


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, cfg: RunConfig, config_yaml: str, corpus: Corpus, ctx: DistContext):
        self.cfg, self.config_yaml, self.ctx = cfg, config_yaml, ctx
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_root = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else self.run_dir / "checkpoints"
        self.precision = resolve_precision(cfg.train.precision, ctx.device.type == "cuda")
        self.global_sequences, self.grad_accum = batch_layout(cfg.train, ctx.dp)
        self.state = RunState(
            layout={"tp": ctx.tp, "pp": ctx.pp, "dp": ctx.dp, "zero_stage": cfg.parallel.zero_stage},
            model=cfg.model.to_dict(), tokenizer_sha256=corpus.manifest.tokenizer_sha256,
            seq_len=cfg.train.seq_len, data_streams=cfg.data.streams,
        )
        # Check a checkpoint we would resume from before anything is built or written.
        self.resume_from = find_resume_checkpoint(cfg.train.resume, self.ckpt_root)
        if self.resume_from is not None:
            check_compatible(read_state(self.resume_from), self.state, self.resume_from)

        seed_everything(cfg.train.seed)
        self.engine = ParallelEngine(cfg, ctx, self.precision,  # weights drawn from per-layer seeds
                                     eos_id=corpus.manifest.eos_id if cfg.data.document_masking else None)
        self.corpus = corpus
        self.train_batches: TrainBatches | None = None  # opened in fit(), at the resumed position
        self.val_batches = EvalBatches(corpus, cfg.data.val_split, seq_len=cfg.train.seq_len,
                                       micro_batch_size=cfg.train.micro_batch_size, dp_rank=ctx.dp_rank,
                                       dp=ctx.dp, device=ctx.device)
        # One rank per data-parallel group records its samples (TP and PP ranks read the same ones).
        self.trace_file = (self.run_dir / "samples" / f"dp_rank_{ctx.dp_rank:05d}.jsonl"
                           if cfg.data.trace_samples and ctx.rank % ctx.tp == 0 and ctx.rank < ctx.tp * ctx.dp
                           else None)
        self.params = parameter_count(cfg.model)
        self.flops_per_token = flops_per_token(cfg.model, cfg.train.seq_len)
        self.logger = self._make_logger()

    def _open_train_batches(self) -> TrainBatches:
        d, train = self.cfg.data, self.cfg.train
        if self.ctx.is_main and d.streams % (self.ctx.dp * max(1, d.num_workers)):
            print(f"note: data.streams={d.streams} is not a multiple of DP x data.num_workers = "
                  f"{self.ctx.dp} x {max(1, d.num_workers)}: loader workers share streams and read some shards "
                  "more than once (the samples are the same)", flush=True)
        return TrainBatches(self.corpus, d.train_split, seq_len=train.seq_len,
                            micro_batch_size=train.micro_batch_size, streams=d.streams, seed=train.seed,
                            dp_rank=self.ctx.dp_rank, dp=self.ctx.dp,
                            consumed_samples=self.state.consumed_samples, num_workers=d.num_workers,
                            prefetch=d.prefetch, skip_bad_shards=d.skip_bad_shards, device=self.ctx.device)

    def _make_logger(self) -> MetricLogger:
        if not self.ctx.is_main:
            return MetricLogger([])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(self.config_yaml)
        sinks = [ConsoleSink(), JsonlSink(self.run_dir / "metrics.jsonl")]
        wandb_cfg = self.cfg.logging.wandb
        if wandb_cfg.enabled and wandb_cfg.mode != "disabled":
            sinks.append(WandbSink(wandb_cfg, self.run_dir, self.run_dir.name, {"config": self.config_yaml}))
        return MetricLogger(sinks)

    def say(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, flush=True)

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> RunState:
        cfg, train = self.cfg, self.cfg.train
        if self.resume_from is not None:
            saved = load_checkpoint(self.engine, self.resume_from, self.ctx.rank)
            self.state.step, self.state.consumed_samples = saved.step, saved.consumed_samples
            self.state.tokens_seen = saved.tokens_seen
            self.say(f"resumed from {self.resume_from} at step {saved.step} "
                     f"(sample {saved.consumed_samples:,} of the data order)")
        self.train_batches = self._open_train_batches()
        last_step = train.stop_at_step or train.steps
        self.say(
            f"model {cfg.model.name}: {self.params.total / 1e6:.1f}M parameters | "
            f"{self.flops_per_token / 1e6:.1f} MFLOP/token | {self.ctx.world_size} rank(s) "
            f"({self.ctx.backend}, {self.precision}, TP={self.ctx.tp} PP={self.ctx.pp} DP={self.ctx.dp} "
            f"ZeRO-{cfg.parallel.zero_stage}) | "
            f"{self.global_sequences} x {train.seq_len} tokens per step, grad accumulation {self.grad_accum}"
        )
        throughput = Throughput(self.flops_per_token, device_peak_flops(self.ctx.device, self.precision),
                                self.ctx.world_size)
        loss_sum = torch.zeros((), device=self.ctx.device, dtype=torch.float64)
        steps_in_window = 0
        while self.state.step < last_step:
            loss_sum += self._train_step()
            steps_in_window += 1
            step = self.state.step
            throughput.add(1, self.global_sequences * train.seq_len)
            if step % cfg.logging.every == 0 or step in (1, last_step):
                self._log_train(loss_sum / steps_in_window, throughput, train.steps - step)
                loss_sum.zero_()
                steps_in_window = 0
            if train.eval_every and (step % train.eval_every == 0 or step == last_step):
                self._evaluate()
            if step == last_step or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
                path = self._save()
                if path:
                    self.say(f"saved checkpoint {path}")
        self.logger.close()
        return self.state

    def _save(self):
        consolidated = None
        if self.cfg.checkpoint.consolidated:
            from megallm.checkpoint.portable import gather_state

            portable = gather_state(self.engine, self.cfg.model, with_optimizer=False)
            consolidated = portable.weights if portable is not None else None
        return save_checkpoint(self.engine.engine, self.ckpt_root, self.state, self.config_yaml, self.ctx.rank,
                               self.cfg.checkpoint.keep_last, consolidated=consolidated,
                               tokenizer_json=self.corpus.tokenizer_json() if self.ctx.is_main else None)

    def _train_step(self) -> torch.Tensor:
        """One optimizer step over `grad_accum` micro-batches; returns this replica's mean loss (no sync)."""
        self.step_lr = self.engine.learning_rate  # the LR this step applies
        micro_batches, samples = [], []
        for _ in range(self.grad_accum):
            micro_batches.append(self.train_batches.next_micro_batch())
            samples += self.train_batches.last_samples
        if self.trace_file is not None:
            self._trace(samples, micro_batches)
        loss = self.engine.train_step(micro_batches)
        self.state.step += 1
        self.state.consumed_samples += self.global_sequences
        self.state.tokens_seen += self.global_sequences * self.cfg.train.seq_len
        return loss

    def _trace(self, samples: list[int], micro_batches: list[torch.Tensor]) -> None:
        rows = [row for batch in micro_batches for row in batch.cpu().numpy()]
        hashes = [hashlib.sha1(row.tobytes()).hexdigest()[:16] for row in rows]
        self.trace_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.trace_file, "a") as f:
            f.write(json.dumps({"step": self.state.step + 1, "samples": samples, "tokens_sha1": hashes}) + "\n")

    def _log_train(self, local_loss: torch.Tensor, throughput: Throughput, steps_left: int) -> None:
        record = {
            "kind": "train", "step": self.state.step, "total_steps": self.cfg.train.steps,
            "loss": self.engine.mean_over_data_parallel(local_loss), "lr": self.step_lr,
            "grad_norm": self.engine.grad_norm,
            "tokens_seen": self.state.tokens_seen, "epoch": self.train_batches.epoch(self.state.consumed_samples),
            "skipped_shards": self.engine.max_over_ranks(len(self.train_batches.skipped_shards)),
            **throughput.report(steps_left),
            "peak_mem_gib": self.engine.max_over_ranks(peak_memory_bytes(self.ctx.device)) / 2**30,
        }
        self.logger.log(record)

    def _evaluate(self) -> None:
        per_rank = -(-self.cfg.train.eval_batches // self.ctx.dp)
        batches = [self.val_batches.micro_batch(i) for i in range(per_rank)]
        val_loss = self.engine.eval_loss(batches)
        self.logger.log({"kind": "eval", "step": self.state.step, "val_loss": val_loss,
                         "val_ppl": math.exp(min(val_loss, 50.0))})
