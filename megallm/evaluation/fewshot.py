"""Few-shot evaluation of one task: demonstrations per query, one prompt each, the model's answers
scored (megallm.cli.evaluate is the command line around it).

Multiple choice: the model's log-likelihood of each choice as the prompt's continuation
(" " + choice, megallm.evaluation.prompts.continuation); the argmax is the prediction
(accuracy), and again after dividing by the continuation's length in characters
(accuracy_norm, lm-evaluation-harness's acc_norm). Generation: a greedy completion stopped at
the stop strings, stripped, scored against the targets with the task's metrics (BLEU, ROUGE:
megallm.evaluation.metrics) and exact match. Every number that is a mean over examples has its
standard error beside it (`<metric>_stderr`, as lm-evaluation-harness reports them; BLEU's by
bootstrap: megallm.evaluation.metrics).

A task's record keeps every example's outcome under "samples" (as lm-eval's --log_samples): its
id, the ids of its demonstrations, and for multiple choice each choice's log-likelihood, the
predictions and the gold index; for generation the output and the target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from megallm.errors import UsageError
from megallm.evaluation import demos as demo_methods
from megallm.evaluation.metrics import GENERATION_METRICS, accuracy, mean_stderr
from megallm.evaluation.prompts import continuation, few_shot_prompt
from megallm.evaluation.tasks import MULTIPLE_CHOICE, Task

PROGRESS_EVERY_S = 10.0
CHUNK = 16  # examples scored between progress checks


@dataclass(frozen=True)
class FewShot:
    """How a task is put to the model."""

    k: int = 0  # demonstrations per query
    method: str = "random"  # random, bm25 or embedding (megallm.evaluation.demos)
    seed: int = 0
    limit: Optional[int] = None  # score the first `limit` queries only
    stop: tuple[str, ...] = ("\n\n",)  # generation ends at the first of these
    max_new_tokens: int = 64
    progress: Callable[[str], None] = field(default=print, compare=False)


def evaluate_task(model, task: Task, demo_pool: Optional[Task], setup: FewShot) -> dict:
    """One task's result record (megallm.evaluation.report); demonstrations from `demo_pool`, else
    leave-one-out from the task itself."""
    began = time.perf_counter()
    queries = list(task.examples)
    pool = queries if demo_pool is None else list(demo_pool.examples)
    embed = (lambda texts: model.embed(list(texts))) if setup.method == "embedding" else None
    try:
        chosen = demo_methods.choose_demonstrations(pool, queries, setup.k, setup.method, setup.seed, embed=embed,
                                                    same_pool=demo_pool is None)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    count = min(len(queries), setup.limit or len(queries))
    prompts = [few_shot_prompt([pool[j] for j in chosen[i]], queries[i]) for i in range(count)]
    ticker = _Ticker(task.name, count, setup.progress)
    if task.kind == MULTIPLE_CHOICE:
        metrics, counts, samples = score_multiple_choice(model, queries[:count], prompts, ticker.advance)
    else:
        metrics, counts, samples = score_generation(model, task, queries[:count], prompts, setup, ticker.advance)
    for sample, demos in zip(samples, chosen):
        sample["demonstrations"] = [pool[j].id for j in demos]
    return {"task": task.name, "file": str(task.path), "kind": task.kind, "k": setup.k, "method": setup.method,
            "seed": setup.seed, "demo_pool": None if demo_pool is None else str(demo_pool.path),
            "metrics": metrics, "counts": {"examples": count, "pool": len(pool), **counts},
            "seconds": round(time.perf_counter() - began, 3), "samples": samples}


def score_multiple_choice(model, examples: list, prompts: list[str], advance: Callable[[int], None]
                          ) -> tuple[dict, dict, list[dict]]:
    """Accuracy by the argmax of each choice's log-likelihood, and by it per character (accuracy_norm), with
    their standard errors; a sample per example."""
    samples = []
    for first in range(0, len(examples), CHUNK):
        batch = list(zip(examples[first:first + CHUNK], prompts[first:first + CHUNK]))
        pairs = [(prompt, continuation(choice)) for example, prompt in batch for choice in example.choices]
        scores = iter(model.loglikelihood(pairs))
        for example, _ in batch:
            lls = [next(scores)[0] for _ in example.choices]
            per_char = [ll / len(continuation(c)) for ll, c in zip(lls, example.choices)]
            samples.append({"id": example.id, "gold": example.gold, "loglikelihoods": lls,
                            "prediction": max(range(len(lls)), key=lls.__getitem__),
                            "prediction_norm": max(range(len(lls)), key=per_char.__getitem__)})
        advance(len(batch))
    golds = [e.gold for e in examples]
    metrics: dict[str, Optional[float]] = {}
    for name, key in (("accuracy", "prediction"), ("accuracy_norm", "prediction_norm")):
        metrics[name] = accuracy([s[key] for s in samples], golds)
        metrics[f"{name}_stderr"] = mean_stderr([float(s[key] == s["gold"]) for s in samples])
    return metrics, {"choices": sum(len(e.choices) for e in examples)}, samples


def score_generation(model, task: Task, examples: list, prompts: list[str], setup: FewShot,
                     advance: Callable[[int], None]) -> tuple[dict, dict, list[dict]]:
    """Greedy completions, cut at the stop strings and stripped, scored with the task's metrics; a sample
    per example."""
    stop = list(setup.stop)
    outputs = []
    for first in range(0, len(examples), CHUNK):
        batch = prompts[first:first + CHUNK]
        outputs += [text.strip() for text in model.generate(batch, setup.max_new_tokens, stop=stop)]
        advance(len(batch))
    references = [e.target for e in examples]
    metrics: dict = {}
    for name in task.metrics:
        metrics.update(GENERATION_METRICS[name](outputs, references))
    exact = [float(o == r.strip()) for o, r in zip(outputs, references)]
    metrics["exact_match"], metrics["exact_match_stderr"] = sum(exact) / len(exact), mean_stderr(exact)
    samples = [{"id": e.id, "output": o, "target": e.target, "exact_match": x == 1.0}
               for e, o, x in zip(examples, outputs, exact)]
    return metrics, {"empty_outputs": sum(not o for o in outputs)}, samples


class _Ticker:
    """A progress line at most every PROGRESS_EVERY_S seconds, and at the end: examples done, rate."""

    def __init__(self, name: str, total: int, progress: Callable[[str], None]):
        self.name, self.total, self.done, self.progress = name, total, 0, progress
        self.began = self.last = time.perf_counter()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= PROGRESS_EVERY_S or self.done == self.total:
            self.last = now
            self.progress(f"{self.name}: {self.done:,}/{self.total:,} examples, "
                     f"{self.done / max(now - self.began, 1e-9):,.2f} examples/s")
