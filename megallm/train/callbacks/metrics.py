"""The numbers of a "train" record: loss, LR, grad norm, data position; tokens/s, MFU, ETA, memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from megallm.metrics.throughput import Throughput, peak_memory_bytes
from megallm.train.callbacks.base import Callback, StepOutput

if TYPE_CHECKING:  # the trainer imports the callbacks, not the other way round
    from megallm.train.trainer import Trainer


def flops_seen(tokens_seen: int, flops_per_token: int) -> float:
    """The training FLOPs of `tokens_seen` tokens. A float: past 9.2e18 (a 1B model's 1.5B tokens) the
    count overflows the int64 that JSON readers (pandas) and W&B store, and 53 bits of mantissa are plenty."""
    return float(tokens_seen * flops_per_token)


class TrainMetrics(Callback):
    """The loss averaged over the steps since the last record that updated the weights (None if
    none did) and over the data-parallel replicas; the LR the last step applied and its gradient norm;
    tokens seen, the epoch and the count of skipped shards (the largest over ranks); the training FLOPs
    so far, `flops_seen` = tokens_seen x `flops_per_token` (cumulative over resumes: tokens_seen comes
    back with the checkpoint)."""

    def __init__(self, flops_per_token: int):
        self.flops_per_token = flops_per_token
        self._loss_sum = torch.zeros((), dtype=torch.float64)  # on the device from on_fit_start
        self._steps, self._lr = 0, 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        self._loss_sum = torch.zeros((), device=trainer.ctx.device, dtype=torch.float64)

    def post_train_batch(self, trainer: Trainer, output: StepOutput) -> None:
        self._lr = output.lr
        if output.applied:  # a skipped step's loss may be NaN (megallm.train.callbacks.nan_guard logs it)
            self._loss_sum += output.loss  # no host sync: reduced only when a record is made
            self._steps += 1

    def collect_metrics(self, trainer: Trainer, record: dict) -> None:
        engine, state, batches = trainer.engine, trainer.state, trainer.batches
        assert batches is not None, "metrics are collected inside fit, which opens the batches"
        record.update(
            loss=engine.mean_over_data_parallel(self._loss_sum / self._steps) if self._steps else None, lr=self._lr,
            grad_norm=engine.grad_norm, tokens_seen=state.tokens_seen,
            flops_seen=flops_seen(state.tokens_seen, self.flops_per_token),
            epoch=batches.epoch(state.consumed_samples),
            skipped_shards=engine.max_over_ranks(len(batches.skipped_shards)),
        )
        # A mixture's tokens per source so far (a pure function of the sample count: no communication).
        record.update({f"{name}/tokens": samples * trainer.seq_len
                       for name, samples in batches.source_samples(state.consumed_samples).items()})
        self._loss_sum.zero_()
        self._steps = 0

    def on_fit_end(self, trainer: Trainer) -> None:
        """A mixture's realised proportions over the whole run so far: a "mixture" record."""
        assert trainer.batches is not None, "on_fit_end runs inside fit"
        counts = trainer.batches.source_samples(trainer.state.consumed_samples)
        total = sum(counts.values())
        if total:
            trainer.log({"kind": "mixture", "step": trainer.state.step,
                         **{f"{name}/share": round(n / total, 6) for name, n in counts.items()},
                         **{f"{name}/tokens": n * trainer.seq_len for name, n in counts.items()}})


class SpeedMonitor(Callback):
    """Tokens/s, step time, TFLOP/s per device, MFU (None where the device's peak is unknown)
    and ETA since the last record; where the step time went (`trainer.timer`: data_ms,
    forward_backward_ms, optimizer_ms per step, this rank's); the peak memory of the busiest rank."""

    def __init__(self, flops_per_token: int, peak_flops_per_device: Optional[float]):
        self.flops_per_token, self.peak_flops_per_device = flops_per_token, peak_flops_per_device
        self._throughput: Optional[Throughput] = None  # from on_fit_start, when the world is known
        self._steps = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        self._throughput = Throughput(self.flops_per_token, self.peak_flops_per_device, trainer.ctx.world_size)

    @property
    def throughput(self) -> Throughput:
        assert self._throughput is not None, "on_fit_start makes it"
        return self._throughput

    def post_train_batch(self, trainer: Trainer, output: StepOutput) -> None:
        self.throughput.add(1, trainer.tokens_per_step)
        self._steps += 1

    def collect_metrics(self, trainer: Trainer, record: dict) -> None:
        phases = trainer.timer.report(self._steps)  # first: it waits for the device, so the clock below is true
        self._steps = 0
        record.update(self.throughput.report(trainer.steps - trainer.state.step))
        record.update({name: round(ms, 3) for name, ms in phases.items()})
        record["peak_mem_gib"] = trainer.engine.max_over_ranks(peak_memory_bytes(trainer.ctx.device)) / 2**30
