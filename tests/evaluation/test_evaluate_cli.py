"""tools/evaluate.py as a user runs it on the tiny trained model (tests/evaluation/test_model.py): a
multiple-choice and a generation task with few-shot demonstrations and a corpus's perplexity, to a
table, a JSON file and an offline W&B run; and the one-line errors, found before the model is read."""

from __future__ import annotations

import json
import os

import pytest

from megallm.cli.evaluate import main
from megallm.evaluation.demos import choose_demonstrations
from megallm.evaluation.metrics import accuracy
from megallm.evaluation.model import EvalModel
from megallm.evaluation.perplexity import perplexity
from megallm.evaluation.prompts import continuation, few_shot_prompt
from megallm.evaluation.tasks import read_task
from tests.helpers import REPO, assert_one_line_error, run_main, run_tool

FIXTURES = REPO / "tests" / "fixtures" / "lm_eval"
CHOICE, GENERATION = FIXTURES / "choice_task.jsonl", FIXTURES / "generation_task.jsonl"


def expected_accuracy(model: EvalModel, k: int, method: str, seed: int, limit: int) -> float:
    """The multiple-choice task's accuracy computed here from the library's pieces: leave-one-out demos,
    the argmax of each choice's log-likelihood."""
    examples = list(read_task(CHOICE).examples)
    chosen = choose_demonstrations(examples, examples, k, method, seed, embed=model.embed, same_pool=True)
    predictions = []
    for example, demos in list(zip(examples, chosen))[:limit]:
        prompt = few_shot_prompt([examples[j] for j in demos], example)
        lls = [ll for ll, _ in model.loglikelihood([(prompt, continuation(c)) for c in example.choices])]
        predictions.append(lls.index(max(lls)))
    return accuracy(predictions, [e.gold for e in examples[:limit]])


@pytest.mark.slow
def test_tool_reports_tasks_and_perplexity(trained, world_of_one, tmp_path):
    out = tmp_path / "results" / "tiny.json"
    result = run_tool("evaluate", trained.hf, "--task", CHOICE, "--task", GENERATION, "--k", 2, "--seed", 3,
                      "--limit", 6, "--max-new-tokens", 8, "--perplexity", trained.corpus, "--max-tokens", 300,
                      "--seq-len", 32, "--output", out, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["task", "kind", "k", "demos", "n", "metric", "value", "stderr"]
    assert [r.split()[-3] for r in rows] == ["accuracy", "accuracy_norm", "bleu", "rouge1", "rouge2", "rougeL",
                                             "exact_match", "perplexity", "bits_per_byte", "byte_perplexity",
                                             "mean_nll"]
    assert "python_choice: 6/6 examples" in result.stderr and "examples/s" in result.stderr

    results = json.loads(out.read_text())
    assert results["model"] == str(trained.hf) and results["versions"]["megallm"]
    choice, generation = results["tasks"]
    assert (choice["task"], choice["k"], choice["method"], choice["seed"]) == ("python_choice", 2, "random", 3)
    assert choice["counts"] == {"examples": 6, "pool": 8, "choices": 24} and choice["demo_pool"] is None
    assert generation["kind"] == "generation" and generation["counts"]["examples"] == 6
    assert 0 <= generation["metrics"]["bleu"] <= 100 and 0 <= generation["metrics"]["rougeL"] <= 100
    (ppl,) = results["perplexity"]
    assert (ppl["tokens"], ppl["mode"], ppl["seq_len"]) == (300, "joined", 32)

    with EvalModel.load(trained.hf) as model:  # the same numbers, computed here
        assert choice["metrics"]["accuracy"] == expected_accuracy(model, 2, "random", 3, 6)
        same = perplexity(model, [trained.corpus], max_tokens=300, seq_len=32)
    assert ppl["nll"] == pytest.approx(same.nll, rel=1e-6) and ppl["bytes"] == same.bytes


@pytest.mark.slow
def test_embedding_demos_and_wandb_offline(trained, world_of_one, tmp_path, capsys, monkeypatch):
    from tests.wandb_offline import OfflineRun

    for name in [n for n in os.environ if n.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    for name in ("CACHE", "CONFIG", "DATA", "ARTIFACT"):  # W&B's own folders in the test's, not HOME
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / f"wandb_{name.lower()}"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "megallm-eval-test")
    out = tmp_path / "eval.json"
    result = run_main(main, [trained.hf, "--task", CHOICE, "--k", 3, "--demos", "embedding", "--output", out,
                             "--wandb"], capsys)
    assert result.returncode == 0, result.stderr
    assert "logged to W&B (offline)" in result.stderr
    task = json.loads(out.read_text())["tasks"][0]
    with EvalModel.load(trained.hf) as model:
        assert task["metrics"]["accuracy"] == expected_accuracy(model, 3, "embedding", 0, 8)
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    run = OfflineRun.read(folder)
    assert run.project == "megallm-eval-test" and run.config["demos"] == "embedding"
    logged = {k: v for row in run.rows for k, v in row.items()}
    assert logged["python_choice/accuracy"] == task["metrics"]["accuracy"]


def test_mistakes_are_one_line_before_the_model_is_read(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(CHOICE.read_text().replace('"gold": 2}', '"gold": 7}', 1))
    model = tmp_path / "model"
    model.mkdir()  # never read: every mistake below is found first

    def error(*args):
        return assert_one_line_error(run_main(main, [*args], capsys), prefix="evaluate: error: ")

    assert f"model {tmp_path / 'missing'} does not exist" in error(tmp_path / "missing", "--task", CHOICE)
    assert f"{bad}:4: \"gold\" is 7 but there are 4 choices" in error(model, "--task", bad)
    assert "--k 8 demonstrations asked for, but" in error(model, "--task", CHOICE, "--k", 8)
    assert "7 once each query is left out" in error(model, "--task", CHOICE, "--k", 8)
    assert f"--demo-pool {CHOICE} has 8 examples" in error(model, "--task", CHOICE, "--demo-pool", CHOICE, "--k", 9)
    assert "holds generation examples" in error(model, "--task", CHOICE, "--demo-pool", GENERATION)
    assert "--demos 'nearest' is not a method" in error(model, "--task", CHOICE, "--demos", "nearest")
    assert "nothing to evaluate" in error(model)
    assert "1 --demo-pool for 2 --task" in error(model, "--task", CHOICE, "--task", CHOICE, "--demo-pool", CHOICE)
