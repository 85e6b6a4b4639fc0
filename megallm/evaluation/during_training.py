"""Downstream evaluation during training: few-shot tasks scored with the live model every N steps.

The first application that plugs into the training loop from outside the core: launch/pretrain.py
(megallm.cli.pretrain) builds a `DownstreamEvaluator` from the config's `downstream` section
(megallm.evaluation.downstream, which checks it before any process group starts) and hands it to
`build_trainer(..., extra_callbacks=...)`; nothing in the core imports this module.

Every `downstream.every` steps and at the last step, each task (a task file of
megallm.evaluation.tasks) is scored as tools/evaluate.py scores it (megallm.evaluation.fewshot:
`k` demonstrations per query drawn at random by `seed` from the task's other examples, the same
ones at every evaluation), and one record is logged beside the held-out loss's:

    {"kind": "downstream", "step", "<task>/accuracy", "<task>/accuracy_stderr", "<task>/accuracy_norm",
     ..., "accuracy" (the mean over the multiple-choice tasks), "seconds", "tokens_seen", "flops_seen"}

(in W&B `downstream/<task>/accuracy`, plotted against step, tokens_seen or flops_seen).

The model is the engine's own on every rank, not a copy (`LiveModel`): the ranks of one replica
feed it the same rows, its logits are gathered over the tensor-parallel ranks, and the
data-parallel replicas share the requests out and gather the scores. The training numbers do not
change: the model is scored without gradients in eval mode and put back in the mode it was in,
and the global RNG states (Python, NumPy, torch CPU and CUDA) are put back as they were
(`kept_rng_states`), so nothing it does draws from the training's random streams.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, cast

import numpy as np
import torch
import torch.distributed as dist
from tokenizers import Tokenizer

from megallm.data.tokenizer import SpecialTokens
from megallm.evaluation.fewshot import FewShot, evaluate_task
from megallm.evaluation.model import EvalModel, Request
from megallm.evaluation.report import HEADLINE
from megallm.evaluation.tasks import MULTIPLE_CHOICE, Task
from megallm.train.callbacks.base import Callback
from megallm.train.callbacks.metrics import flops_seen

if TYPE_CHECKING:  # only annotations: the callback reaches them through the trainer
    from megallm.engine.engine import ParallelEngine
    from megallm.model.llama import LlamaModel
    from megallm.train.trainer import Trainer

KIND = "downstream"  # the records' kind (W&B: downstream/<task>/<metric>)


# ---- the live model ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Vocabulary:
    """The run's tokenizer (its corpus's) and document tokens."""

    tokenizer: Tokenizer
    file: Path
    special: SpecialTokens


class WholeVocabulary(torch.nn.Module):
    """A tensor-parallel model whose logits come whole: each TP rank's slice of the vocabulary
    [s, b, vocab / tp] gathered into [s, b, vocab] on every rank of the group (collective)."""

    def __init__(self, model: LlamaModel, group):
        super().__init__()
        self.inner, self.group = model, group

    @property
    def embedding(self) -> torch.nn.Module:
        return self.inner.embedding

    @property
    def cfg(self):
        return self.inner.cfg

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.inner(tokens).contiguous()  # [s, b, vocab / tp]
        slices = [torch.empty_like(logits) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(slices, logits, group=self.group)
        return torch.cat(slices, dim=-1)  # [s, b, vocab]: the ranks hold consecutive slices


@dataclass
class LiveModel(EvalModel):
    """EvalModel over a training engine's model (see the module docstring): every rank of the run calls
    the same methods with the same arguments; each data-parallel replica scores every dp-th request
    and the scores are gathered, so every rank returns them all."""

    dp_group: Any = None
    dp: int = 1
    dp_rank: int = 0

    @classmethod
    def of(cls, engine: ParallelEngine, vocabulary: Vocabulary, max_length: int, batch_size: int,
           log: Callable[[str], None] = lambda _: None) -> LiveModel:
        # deferred: megatron-core's parallel state is only needed once the engine exists
        from megatron.core import parallel_state as ps

        if engine.pipelined:  # check_downstream refuses it: a programming error here
            raise ValueError("LiveModel needs the whole model on each rank (parallel.pp=1)")
        model: LlamaModel = engine.engine.module  # this rank's TP slice
        if engine.dims.tp > 1:
            # EvalModel reads a LlamaModel's cfg, embedding and forward, all of which this one serves.
            model = cast("LlamaModel", WholeVocabulary(model, ps.get_tensor_model_parallel_group()))
        return cls(model, vocabulary.tokenizer, vocabulary.file, vocabulary.special, source="training",
                   max_length=max_length, batch_size=batch_size, log=log, dp_group=ps.get_data_parallel_group(),
                   dp=engine.dims.dp, dp_rank=engine.ctx.coords.dp)

    def score(self, requests: Sequence[Request], progress: Optional[Callable[[int], None]] = None
              ) -> list[tuple[float, bool]]:
        if self.dp == 1:
            return super().score(requests, progress)
        mine = super().score(list(requests[self.dp_rank::self.dp]))
        shares: list = [None] * self.dp
        dist.all_gather_object(shares, mine, group=self.dp_group)
        scores: list = [None] * len(requests)
        for rank, share in enumerate(shares):
            scores[rank::self.dp] = share
        return scores


@contextlib.contextmanager
def kept_rng_states() -> Iterator[None]:
    """Put Python's, NumPy's and torch's (CPU and every CUDA device's) global RNG states back as they
    were on leaving: whatever runs inside draws nothing from the training's random streams."""
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """`module` in eval mode inside, back in the mode it was in after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


# ---- the callback --------------------------------------------------------------------------------
class DownstreamEvaluator(Callback):
    """Scores `tasks` every `every` steps and at the last step (module docstring). `seq_len` is the
    context the model trains at: longer prompts keep their last seq_len tokens, as tools/evaluate.py
    does with a checkpoint of the run."""

    priority = 10  # beside the held-out evaluation, before a checkpoint of the same step is saved

    def __init__(self, tasks: list[Task], setup: FewShot, every: int, vocabulary: Vocabulary, seq_len: int,
                 batch_size: int, flops_per_token: int):
        self.tasks, self.setup, self.every, self.vocabulary = tasks, setup, every, vocabulary
        self.seq_len, self.batch_size, self.flops_per_token = seq_len, batch_size, flops_per_token
        self.model: Optional[LiveModel] = None  # built from the engine when the loop starts

    def on_fit_start(self, trainer: Trainer) -> None:
        said: set[str] = set()

        def once(line: str) -> None:  # what scoring adjusted (EvalModel.log): the same at every evaluation
            if trainer.ctx.is_main and line not in said:
                said.add(line)
                print(f"downstream: {line}", flush=True)

        self.model = LiveModel.of(trainer.engine, self.vocabulary, self.seq_len, self.batch_size, log=once)

    def post_step(self, trainer: Trainer) -> None:
        step = trainer.state.step
        if step % self.every and step != trainer.last_step:
            return
        tokens = trainer.state.tokens_seen
        trainer.log({"kind": KIND, "step": step, **self.evaluate(trainer.engine), "tokens_seen": tokens,
                     "flops_seen": flops_seen(tokens, self.flops_per_token)})

    def evaluate(self, engine: ParallelEngine) -> dict:
        """Collective: every task's headline numbers, their mean accuracy and the seconds it took."""
        began = time.perf_counter()
        with kept_rng_states(), eval_mode(engine.engine):
            results = [evaluate_task(self.model, task, None, self.setup) for task in self.tasks]
        return {**scores(results), "seconds": round(time.perf_counter() - began, 3)}


def scores(results: list[dict]) -> dict:
    """`<task>/<metric>` (and `_stderr` where there is one) for each task's headline metrics
    (megallm.evaluation.report.HEADLINE), and `accuracy`: the mean over the multiple-choice tasks."""
    flat: dict = {}
    for result in results:
        for name in (m for m in HEADLINE[result["kind"]] if m in result["metrics"]):
            flat[f"{result['task']}/{name}"] = result["metrics"][name]
            if result["metrics"].get(f"{name}_stderr") is not None:
                flat[f"{result['task']}/{name}_stderr"] = result["metrics"][f"{name}_stderr"]
    choice = [r["metrics"]["accuracy"] for r in results if r["kind"] == MULTIPLE_CHOICE]
    if choice:
        flat["accuracy"] = sum(choice) / len(choice)
    return flat
