"""The `downstream` config section (megallm.config.schema.DownstreamConfig) on the application side:
what launch/pretrain.py asks before any process group starts, and the callback it plugs in.

`downstream_tasks(cfg)` reads the task files and refuses, in one line (ConfigError), what
downstream evaluation during training cannot do: no task files, a layout whose ranks do not each
hold the whole weights (parallel.pp > 1, ZeRO-3), an encoder (train.objective=mlm), a generation
task under tensor parallelism, more demonstrations than a task has examples, two tasks of one
name, a missing [eval] extra. It imports no torch: a mistake costs a second.
`downstream_callbacks(cfg, corpus, tasks)` builds the callback
(megallm.evaluation.during_training.DownstreamEvaluator) for build_trainer's extra_callbacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from megallm.config import ConfigError, RunConfig
from megallm.errors import DataError
from megallm.evaluation.tasks import GENERATION, Task, read_task
from megallm.extras import require

if TYPE_CHECKING:  # annotations only: the corpus is opened by the caller
    from megallm.data.corpus import Corpus
    from megallm.train.callbacks.base import Callback

LATER = "or evaluate the checkpoints afterwards with tools/evaluate.py RUN --all-checkpoints"


def downstream_tasks(cfg: RunConfig) -> list[Task]:
    """The tasks of `cfg.downstream` (none when downstream.every=0), read and checked against the run's
    layout and objective (module docstring); its ranges are megallm.config's checks."""
    d, p = cfg.downstream, cfg.parallel
    if not d.every:
        return []
    if not d.tasks:
        raise ConfigError(f"downstream.every={d.every} needs task files: downstream.tasks=[FILE,...] (JSON lines, "
                          "megallm.evaluation.tasks; e.g. from tools/make_eval_data.py)")
    if p.pp > 1:
        raise ConfigError(f"downstream evaluation scores the whole model on every rank, and parallel.pp={p.pp} splits "
                          f"it into stages; use parallel.pp=1, {LATER}")
    if p.zero_stage == 3:
        raise ConfigError(f"downstream evaluation scores the whole model on every rank, and parallel.zero_stage=3 "
                          f"partitions its weights; use ZeRO 0, 1 or 2, {LATER}")
    if cfg.train.objective != "causal":
        raise ConfigError(f"downstream evaluation scores a causal language model, and train.objective="
                          f"{cfg.train.objective} trains an encoder; set downstream.every=0")
    require("eval", "downstream evaluation (downstream.every > 0)")
    tasks = []
    for path in d.tasks:
        try:
            task = read_task(Path(path))
        except DataError as error:
            raise ConfigError(f"downstream.tasks: {error}") from None
        if task.kind == GENERATION and p.tp > 1:
            raise ConfigError(f"downstream.tasks: {path} is a generation task, which runs at parallel.tp=1 only "
                              f"(this run has parallel.tp={p.tp}); multiple-choice tasks run at any tp")
        if d.k > len(task.examples) - 1:
            raise ConfigError(f"downstream.k={d.k} demonstrations asked for, but {path} has {len(task.examples)} "
                              f"examples, so {len(task.examples) - 1} once each query is left out")
        tasks.append(task)
    names = [t.name for t in tasks]
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated:
        raise ConfigError(f"downstream.tasks: two files are task {repeated!r}, whose numbers would share keys; name "
                          'one in its first line: {"task": {"name": "..."}}')
    return tasks


def downstream_callbacks(cfg: RunConfig, corpus: Corpus, tasks: list[Task]) -> list[Callback]:
    """[the run's DownstreamEvaluator] for `tasks` (downstream_tasks), [] for none. The tokenizer is the
    corpus's, its document tokens the manifest's: what the run trains on."""
    if not tasks:
        return []
    # deferred: the callback imports the training loop (torch, megatron-core, DeepSpeed)
    from tokenizers import Tokenizer

    from megallm.data.tokenizer import SpecialTokens
    from megallm.evaluation.during_training import DownstreamEvaluator, Vocabulary
    from megallm.evaluation.fewshot import FewShot
    from megallm.files import TOKENIZER_FILE
    from megallm.model.flops import flops_per_token

    d, manifest = cfg.downstream, corpus.manifest
    vocabulary = Vocabulary(Tokenizer.from_str(corpus.tokenizer_files()[TOKENIZER_FILE]),
                            Path(corpus.url(manifest.tokenizer_file)), SpecialTokens(manifest.eos_id, manifest.bos_id))
    setup = FewShot(k=d.k, method="random", seed=d.seed, limit=d.limit, max_new_tokens=d.max_new_tokens,
                    progress=lambda _: None)
    return [DownstreamEvaluator(tasks, setup, d.every, vocabulary, cfg.train.seq_len, d.batch_size,
                                flops_per_token(cfg.model, cfg.train.seq_len))]
