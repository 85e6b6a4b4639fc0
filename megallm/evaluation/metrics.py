"""Evaluation metrics, each computed by its reference package (no formula of our own here).

- bleu: sacrebleu's corpus BLEU (13a tokenization, exponential smoothing: its defaults, as its
  command line computes it), 0-100, with sacrebleu's signature to report beside the number;
- rouge: Google's rouge-score package, ROUGE-1, ROUGE-2 and ROUGE-L F-measures with its Porter
  stemmer, averaged over examples and multiplied by 100 to sit on sacrebleu's 0-100 scale.
  Its tokenizer keeps only a-z and 0-9: a fit for English outputs (summaries, docstrings),
  not for German (use BLEU there);
- accuracy and macro_f1: scikit-learn's accuracy_score and f1_score(average="macro"), as
  fractions 0-1 (scikit-learn's scale).

GENERATION_METRICS maps the metric names a generation task may name (megallm.evaluation.tasks)
to their functions, each returning a dict whose key of the same name holds the headline number.

Standard errors, as lm-evaluation-harness computes them (lm_eval.api.metrics), under
`<metric>_stderr`: for a mean over examples (accuracy, exact match, ROUGE), the sample standard
deviation over sqrt(n), `mean_stderr` (for accuracy p over n examples, sqrt(p (1 - p) / (n - 1)));
for corpus BLEU, which is no mean, the standard deviation of BLEU over 100 bootstrap resamples of
the examples (`bootstrap_stderr`: lm-eval's draws, random.Random(0).choices, and its 100 for BLEU).
Fewer than two examples have none (None; lm-eval's "N/A").
"""

from __future__ import annotations

import math
import random
from typing import Callable, Collection, Optional, Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
BLEU_BOOTSTRAP_ITERS = 100  # lm-eval's draws for BLEU's standard error (min(bootstrap_iters, 100))
BOOTSTRAP_CHUNK = 1000  # lm-eval draws in chunks of up to 1000, chunk i from random.Random(i)


def sample_stddev(values: Sequence[float]) -> float:
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def mean_stderr(values: Sequence[float]) -> Optional[float]:
    """The standard error of the mean of `values` (lm-eval's mean_stderr); None below two values."""
    return sample_stddev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def bootstrap_stderr(statistic: Callable[[list[int]], float], n: int, iters: int) -> Optional[float]:
    """lm-eval's bootstrap_stderr: the sample standard deviation of `statistic(indices)` over `iters`
    resamples of range(n) with replacement (chunk i of min(1000, iters) draws from random.Random(i));
    None below two examples."""
    if n < 2:
        return None
    chunk = min(BOOTSTRAP_CHUNK, iters)
    draws = []
    for i in range(iters // chunk):
        rng = random.Random(i)
        draws += [statistic(rng.choices(range(n), k=n)) for _ in range(chunk)]
    return sample_stddev(draws)


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """Corpus BLEU of one reference per hypothesis: {"bleu", "bleu_stderr", "signature", "precisions", "bp",
    "sys_len", "ref_len"}."""
    # deferred: the evaluation command imports this module before it needs any metric
    from sacrebleu.metrics import BLEU

    _check_pairs(hypotheses, references)
    metric = BLEU()
    result = metric.corpus_score(list(hypotheses), [list(references)])

    def resampled(indices: list[int]) -> float:
        return metric.corpus_score([hypotheses[i] for i in indices], [[references[i] for i in indices]]).score

    return {"bleu": result.score, "bleu_stderr": bootstrap_stderr(resampled, len(hypotheses), BLEU_BOOTSTRAP_ITERS),
            "signature": str(metric.get_signature()), "precisions": list(result.precisions),
            "bp": result.bp, "sys_len": result.sys_len, "ref_len": result.ref_len}


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """Mean ROUGE-1/2/L F-measures x 100: {"rouge1", "rouge2", "rougeL", "rouge" (= rougeL)}, each with its
    `_stderr`."""
    # deferred: rouge-score imports nltk (seconds); only generation tasks need it
    from rouge_score.rouge_scorer import RougeScorer

    _check_pairs(hypotheses, references)
    scorer = RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(reference, hypothesis) for hypothesis, reference in zip(hypotheses, references)]
    means = {t: 100.0 * sum(s[t].fmeasure for s in scores) / len(scores) for t in ROUGE_TYPES}
    stderrs = {f"{t}_stderr": mean_stderr([100.0 * s[t].fmeasure for s in scores]) for t in ROUGE_TYPES}
    return {**means, "rouge": means["rougeL"], **stderrs, "rouge_stderr": stderrs["rougeL_stderr"]}


def accuracy(predictions: Collection, golds: Collection) -> float:
    """The fraction of predictions equal to their gold label (0-1)."""
    # deferred: scikit-learn takes seconds to import
    from sklearn.metrics import accuracy_score

    _check_pairs(predictions, golds)
    return float(accuracy_score(list(golds), list(predictions)))


def macro_f1(predictions: Collection, golds: Collection, labels: Optional[Collection] = None) -> float:
    """F1 averaged over labels, each label weighing the same (0-1); `labels`: those to average over
    (default: every label among golds and predictions). A label never predicted nor gold scores 0."""
    # deferred: scikit-learn takes seconds to import
    from sklearn.metrics import f1_score

    _check_pairs(predictions, golds)
    return float(f1_score(list(golds), list(predictions), labels=None if labels is None else list(labels),
                          average="macro", zero_division=0))


def _check_pairs(outputs: Collection, references: Collection) -> None:
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs but {len(references)} references")
    if not len(outputs):
        raise ValueError("no outputs to score")


GENERATION_METRICS: dict[str, Callable[[Sequence[str], Sequence[str]], dict]] = {"bleu": bleu, "rouge": rouge}
