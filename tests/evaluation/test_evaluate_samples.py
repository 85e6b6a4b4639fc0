"""tools/evaluate.py's results file keeps every example's outcome (as lm-eval's --log_samples) and puts standard
errors beside the accuracies, in the file and in the table: the tiny trained model (tests/evaluation/trained.py)
on the fixtures' multiple-choice (8 examples) and generation (6) tasks, each outcome recomputed here."""

from __future__ import annotations

import json
import math

import pytest

from megallm.cli.evaluate import main
from megallm.evaluation.model import EvalModel
from megallm.evaluation.prompts import continuation, few_shot_prompt
from megallm.evaluation.tasks import read_task
from tests.helpers import REPO, run_main

FIXTURES = REPO / "tests" / "fixtures" / "lm_eval"
CHOICE, GENERATION = FIXTURES / "choice_task.jsonl", FIXTURES / "generation_task.jsonl"


@pytest.mark.slow
def test_every_sample_kept_and_stderrs_beside_accuracies(trained, world_of_one, tmp_path, capsys):
    out = tmp_path / "results.json"
    result = run_main(main, [trained.hf, "--task", CHOICE, "--task", GENERATION, "--k", 2, "--max-new-tokens", 6,
                             "--output", out], capsys)
    assert result.returncode == 0, result.stderr
    choice, generation = json.loads(out.read_text())["tasks"]

    examples = {e.id: e for e in read_task(CHOICE).examples}
    samples = choice["samples"]
    assert [s["id"] for s in samples] == list(examples) and len(samples) == 8
    with EvalModel.load(trained.hf) as model:
        for sample in samples[:3]:
            example = examples[sample["id"]]
            assert len(sample["demonstrations"]) == 2 and sample["id"] not in sample["demonstrations"]
            prompt = few_shot_prompt([examples[i] for i in sample["demonstrations"]], example)
            lls = [ll for ll, _ in model.loglikelihood([(prompt, continuation(c)) for c in example.choices])]
            # other batches, other padding: fp32 reductions in other orders
            assert sample["loglikelihoods"] == pytest.approx(lls, rel=1e-6) and sample["gold"] == example.gold
            assert sample["prediction"] == sample["loglikelihoods"].index(max(sample["loglikelihoods"]))
    correct = [s["prediction"] == s["gold"] for s in samples]
    p, n = sum(correct) / len(correct), len(correct)
    assert choice["metrics"]["accuracy"] == p
    assert choice["metrics"]["accuracy_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)), rel=1e-12)
    assert choice["metrics"]["accuracy_norm_stderr"] is not None

    targets = {e.id: e.target for e in read_task(GENERATION).examples}
    outputs = generation["samples"]
    assert [s["id"] for s in outputs] == list(targets) and len(outputs) == 6  # all of them, not the first 5
    assert all(s["target"] == targets[s["id"]] and isinstance(s["output"], str) for s in outputs)
    exact = [s["output"] == s["target"].strip() for s in outputs]
    assert [s["exact_match"] for s in outputs] == exact
    assert generation["metrics"]["exact_match"] == sum(exact) / 6
    assert {"bleu_stderr", "rougeL_stderr", "exact_match_stderr"} <= set(generation["metrics"])

    header, *rows = result.stdout.splitlines()
    assert header.split()[-2:] == ["value", "stderr"]
    accuracy_row = next(r.split() for r in rows if r.split()[-3] == "accuracy")
    assert accuracy_row[-2:] == [f"{p:.4f}", f"{choice['metrics']['accuracy_stderr']:.4f}"]
