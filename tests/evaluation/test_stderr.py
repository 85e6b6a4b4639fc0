"""Standard errors beside the metrics (megallm.evaluation.metrics) equal lm-evaluation-harness's own: its
mean_stderr for means over examples (accuracy, exact match, ROUGE), its 100-draw bootstrap_stderr of
corpus BLEU; on real-looking outputs (German UI messages and docstring summaries from the fixtures,
perturbed as a weak system gets them wrong)."""

from __future__ import annotations

import math

import pytest

from megallm.evaluation.metrics import bleu, mean_stderr, rouge
from tests.evaluation.inputs import references_of, weak_outputs

lm_eval_metrics = pytest.importorskip("lm_eval.api.metrics")


def test_bleu_stderr_is_lm_evals_bootstrap(monkeypatch, capsys):
    references = references_of("translation_en_de")
    hypotheses = weak_outputs(references)
    ours = bleu(hypotheses, references)
    monkeypatch.setenv("DISABLE_MULTIPROC", "1")  # lm-eval's draws in this process (the same draws as its pool's)
    theirs = lm_eval_metrics.bootstrap_stderr(lm_eval_metrics.bleu, list(zip(references, hypotheses)), iters=100)
    assert lm_eval_metrics.bleu(list(zip(references, hypotheses))) == pytest.approx(ours["bleu"], rel=1e-12)
    assert 0.5 < ours["bleu_stderr"] < 20
    assert ours["bleu_stderr"] == pytest.approx(theirs, rel=1e-12)  # float64 sums in other orders
    assert bleu(hypotheses[:1], references[:1])["bleu_stderr"] is None  # lm-eval: "N/A"


def test_mean_stderrs_are_lm_evals():
    from rouge_score.rouge_scorer import RougeScorer

    references = references_of("docstring")
    hypotheses = weak_outputs(references)
    ours = rouge(hypotheses, references)
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(r, h) for h, r in zip(hypotheses, references)]
    for kind in ("rouge1", "rouge2", "rougeL"):
        per_example = [100 * s[kind].fmeasure for s in scores]
        assert ours[f"{kind}_stderr"] == pytest.approx(lm_eval_metrics.mean_stderr(per_example), rel=1e-12)
    assert ours["rouge_stderr"] == ours["rougeL_stderr"] > 0

    correct = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]  # accuracy 5/8
    p, n = 5 / 8, 8
    assert mean_stderr(correct) == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)), rel=1e-12)
    assert mean_stderr(correct) == pytest.approx(lm_eval_metrics.mean_stderr(correct), rel=1e-12)
    assert mean_stderr([1.0]) is None
