"""Metrics (megallm.evaluation.metrics) equal to their reference packages' own numbers.

BLEU against sacrebleu's command line (`sacrebleu REF -i HYP -b`), ROUGE against rouge-score
called directly, accuracy and macro-F1 against scikit-learn's classification report and
hand-counted values; the outputs are real-looking: German UI messages and docstring summaries
from the fixtures, perturbed as a weak system would get them wrong.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

import pytest

from megallm.evaluation.metrics import GENERATION_METRICS, accuracy, bleu, macro_f1, rouge
from tests.evaluation.inputs import references_of, weak_outputs


def test_bleu_equals_sacrebleus_command_line(tmp_path):
    references = references_of("translation_en_de")
    hypotheses = weak_outputs(references)
    (tmp_path / "ref.txt").write_text("\n".join(references) + "\n", encoding="utf-8")
    (tmp_path / "hyp.txt").write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"),
                          "-b", "-w", "4"], capture_output=True, text=True, check=True)
    ours = bleu(hypotheses, references)
    assert f"{ours['bleu']:.4f}" == cli.stdout.strip()
    assert 30 < ours["bleu"] < 100  # a weak system, not a perfect or empty one
    assert "tok:13a" in ours["signature"] and "nrefs:1" in ours["signature"]
    assert bleu(references, references)["bleu"] == pytest.approx(100.0)


def test_rouge_equals_rouge_score_called_directly():
    from rouge_score.rouge_scorer import RougeScorer

    references = references_of("docstring")
    hypotheses = weak_outputs(references)
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    pairs = [scorer.score(r, h) for h, r in zip(hypotheses, references)]
    ours = rouge(hypotheses, references)
    for kind in ("rouge1", "rouge2", "rougeL"):
        assert ours[kind] == pytest.approx(100 * statistics.fmean(p[kind].fmeasure for p in pairs), abs=1e-9)
    assert ours["rouge"] == ours["rougeL"] and 50 < ours["rougeL"] < 100
    assert set(GENERATION_METRICS) == {"bleu", "rouge"}


def test_accuracy_and_macro_f1_equal_scikit_learns_report():
    from sklearn.metrics import classification_report

    golds = ["food", "law", "law", "science", "computers", "food", "science", "law"]
    predictions = ["food", "law", "food", "science", "science", "food", "science", "computers"]
    assert accuracy(predictions, golds) == 5 / 8
    report = classification_report(golds, predictions, output_dict=True, zero_division=0)
    assert macro_f1(predictions, golds) == pytest.approx(report["macro avg"]["f1-score"], abs=1e-12)
    # by hand: F1 food 0.8, law 0.5, science 0.8, computers 0
    assert macro_f1(predictions, golds) == pytest.approx((0.8 + 0.5 + 0.8 + 0.0) / 4)
    # a label neither predicted nor gold counts as 0 when named
    assert macro_f1(predictions, golds, labels=["food", "law", "science", "computers", "art"]) == pytest.approx(
        2.1 / 5)


@pytest.mark.parametrize("metric", [bleu, rouge, accuracy, macro_f1])
def test_mismatched_or_empty_inputs_are_refused(metric):
    with pytest.raises(ValueError, match="2 outputs but 1 references"):
        metric(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no outputs"):
        metric([], [])
