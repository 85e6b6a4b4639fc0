"""The training loop. `Trainer` owns time: the step counter, the loop and when each hook runs.

Everything else is a callback (megallm.train.callbacks): metrics, throughput,
evaluation, checkpoints, sample traces, loggers. The engine (megallm.engine) owns the
model, optimizer and parallel mechanics; the batches (megallm.data.loader) own the data
order. megallm.train.build puts a run together from its config.

What plugs in meets the loop through typed contracts: `TrainingBatches` (here), the engine's
`StepObjective` (megallm.engine.objective) and `Callback` (megallm.train.callbacks.base), all
generic in the run's micro-batch type (token windows in pretraining, labelled rows in a
fine-tuning), which the loop passes from the batches to the engine without looking inside.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Generic, Optional, Protocol, TypeVar

import torch

from megallm.checkpoint.saving import load_checkpoint
from megallm.checkpoint.state import RunState
from megallm.engine.engine import ParallelEngine
from megallm.engine.objective import MicroBatchT
from megallm.metrics.step_timer import StepTimer
from megallm.train.callbacks.base import Callback, StepOutput

MicroBatchT_co = TypeVar("MicroBatchT_co", covariant=True)


class TrainingBatches(Protocol[MicroBatchT_co]):
    """A rank's training micro-batches from a data position on (megallm.data.loader.TrainBatches;
    a fine-tuning's megallm.finetune.batches.ExampleBatches)."""

    @property
    def last_samples(self) -> list[int]:
        """The global sample indices of the rows of the micro-batch read last."""
        ...

    @property
    def skipped_shards(self) -> set[int]:
        """Shards left out as damaged (data.skip_bad_shards), for the metrics."""
        ...

    def next_micro_batch(self) -> MicroBatchT_co:
        ...

    def epoch(self, consumed_samples: int) -> float:
        """Passes over the data after `consumed_samples` samples."""
        ...

    def source_samples(self, consumed_samples: int) -> dict[str, int]:
        """For a mixture of sources, the samples each gave to the first `consumed_samples`; else empty."""
        ...

    def close(self) -> None:
        """Stop loader workers, if any."""
        ...


class Trainer(Generic[MicroBatchT]):
    """Runs `engine` from `state` to step `steps` (or `stop_at_step`), calling `callbacks`' hooks.

    `open_batches(consumed_samples)` opens the training batches at the data position;
    each step reads `grad_accum` micro-batches, `global_sequences` windows of `seq_len` tokens in all.
    Train metrics are collected every `log_every` steps, at the first and the last.
    """

    def __init__(self, engine: ParallelEngine[MicroBatchT], state: RunState,
                 open_batches: Callable[[int], TrainingBatches[MicroBatchT]], *,
                 steps: int, stop_at_step: int, log_every: int, seq_len: int, global_sequences: int, grad_accum: int,
                 callbacks: list[Callback]):
        self.engine, self.state, self.open_batches = engine, state, open_batches
        self.steps, self.last_step, self.log_every = steps, stop_at_step or steps, log_every
        self.seq_len, self.global_sequences, self.grad_accum = seq_len, global_sequences, grad_accum
        self.callbacks = sorted(callbacks, key=lambda c: -c.priority)  # stable: equal priorities keep their order
        self.batches: Optional[TrainingBatches[MicroBatchT]] = None  # opened by fit, at the (resumed) data position
        self.stop_reason: Optional[str] = None
        self.timer = StepTimer(engine.ctx.device)  # where each step's time goes (reported by SpeedMonitor)
        self.exit_code = 0  # what the process exits with after fit (request_stop may set it)
        # Set by a callback's pre_step: read this step's batch but do not train on it (no update).
        self.skip_batch = False

    @property
    def ctx(self):
        return self.engine.ctx

    @property
    def tokens_per_step(self) -> int:
        return self.global_sequences * self.seq_len

    @property
    def is_log_step(self) -> bool:
        step = self.state.step
        return step % self.log_every == 0 or step in (1, self.last_step) or self.stop_reason is not None

    @property
    def is_last_step(self) -> bool:
        """This step ends the loop: the planned last step, or a stop was requested."""
        return self.state.step == self.last_step or self.stop_reason is not None

    def request_stop(self, reason: str, exit_code: int = 0) -> None:
        """End the loop after the current step (its post_step hooks still run, so it is saved); the
        process then exits with `exit_code`."""
        self.stop_reason, self.exit_code = reason, exit_code

    def restore(self, path: Path) -> RunState:
        """Collective: continue from the checkpoint `path`: the engine, this rank's RNG, the step and
        data position, the callbacks' states; the training batches reopen at its data position
        (when the loop runs). Returns the checkpoint's state."""
        saved = load_checkpoint(self.engine, path)
        self.state.step, self.state.consumed_samples = saved.step, saved.consumed_samples
        self.state.tokens_seen = saved.tokens_seen
        self.state.hf_model_files = saved.hf_model_files  # an imported model's config.json etc., for its export
        self.load_callback_states(saved.callbacks)
        if self.batches is not None:
            _close(self.batches)
            self.batches = self.open_batches(self.state.consumed_samples)
        return saved

    def say(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, flush=True)

    def log(self, record: dict) -> None:
        """Hand a metric record (kind "train", "eval", ...) to every callback's log_metrics."""
        record = {"time": round(time.time(), 3), **record}
        self._call("log_metrics", record)

    def callback_states(self) -> dict:
        return {c.name: state for c in self.callbacks if (state := c.state_dict())}

    def load_callback_states(self, states: dict) -> None:
        for callback in self.callbacks:
            if callback.name in states:
                callback.load_state_dict(states[callback.name])

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> RunState:
        """Train to the last step. Whatever ends it, the loader workers are stopped and every callback's
        `close` runs before it returns or raises; an exception first reaches every callback's
        `on_error`, then goes on."""
        self.batches = self.open_batches(self.state.consumed_samples)
        ended_well = False
        try:
            self._call("on_fit_start")
            while self.state.step < self.last_step and self.stop_reason is None:
                self.skip_batch = False
                self._call("pre_step")
                self._call("post_train_batch", self._train_step())
                if self.is_log_step:
                    record = {"kind": "train", "step": self.state.step, "total_steps": self.steps}
                    self._call("collect_metrics", record)
                    self.log(record)
                self._call("post_step")
            if self.stop_reason is not None:
                self.say(f"stopped after step {self.state.step}: {self.stop_reason}")
            self._call("on_fit_end")
            ended_well = True
        except BaseException as error:
            self._call_each("on_error", error)
            raise
        finally:  # on an error too: left running, the loader workers would keep this process from exiting
            _close(self.batches)
            failure = self._call_each("close")
            if failure is not None and ended_well:  # after an exception that one is the news, not a clean-up
                raise failure
        return self.state

    def _call_each(self, hook: str, *args) -> Optional[Exception]:
        """`hook` of every callback, even after one of them raised; the first exception raised (not
        re-raised: the loop's own error, when there is one, is the news)."""
        first = None
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(self, *args)
            except Exception as error:
                first = first or error
        return first

    def _train_step(self) -> StepOutput[MicroBatchT]:
        """One optimizer step over `grad_accum` micro-batches; the state moves on by one step."""
        assert self.batches is not None, "fit opens the batches"
        lr = self.engine.learning_rate  # the LR this step applies
        micro_batches: list[MicroBatchT] = []
        rows: list[list[int]] = []
        with self.timer.phase("data", device=False):
            for _ in range(self.grad_accum):
                micro_batches.append(self.batches.next_micro_batch())
                rows.append(self.batches.last_samples)
        samples = [sample for batch in rows for sample in batch]
        if self.skip_batch:
            loss, applied = torch.zeros((), device=self.ctx.device, dtype=torch.float64), False
        else:
            loss = self.engine.train_step(micro_batches, self.timer, samples=rows)
            applied = self.engine.update_applied
        self.state.step += 1
        self.state.consumed_samples += self.global_sequences
        self.state.tokens_seen += self.tokens_per_step
        return StepOutput(loss=loss, lr=lr, micro_batches=micro_batches, samples=samples, applied=applied,
                          skipped_batch=self.skip_batch)


def _close(batches: Optional[TrainingBatches]) -> None:
    if batches is not None:
        batches.close()
