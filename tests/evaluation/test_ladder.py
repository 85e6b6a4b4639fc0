"""tools/evaluate.py over every kept checkpoint (megallm.evaluation.ladder): a sweep of two model sizes
(planned by megallm.sweep, each run trained in its folder with downstream evaluation on), evaluated
from the sweep's folder to a table, JSON, CSV and the accuracy-vs-FLOPs plot, each checkpoint against
the tokens and FLOPs its run logged and with the accuracies its run logged during training; a run
folder with --all-checkpoints; and the one-line refusals."""

from __future__ import annotations

import csv
import json

import pytest

from megallm.cli.evaluate import main as evaluate
from tests.helpers import REPO, SMALL_MODEL, assert_one_line_error, records, run_main, train

CHOICE = REPO / "tests" / "fixtures" / "lm_eval" / "choice_task.jsonl"
FORTUNES = REPO / "tests" / "fixtures" / "eval" / "fortune_category.jsonl"
GENERATION = REPO / "tests" / "fixtures" / "lm_eval" / "generation_task.jsonl"  # python_generation: 6 examples
TASKS = ["--task", CHOICE, "--task", FORTUNES, "--task", GENERATION, "--k", "2", "--limit", "20",
         "--max-new-tokens", "8"]
SWEEP = [*SMALL_MODEL, "model.num_layers=1,2", "train.seq_len=64", "train.micro_batch_size=2",
         "train.global_batch_tokens=256", "train.steps=8", "optim.lr=1e-2", "optim.warmup_steps=2",
         "logging.every=4", "train.eval_every=0", "checkpoint.every=4", "checkpoint.keep_last=0",
         "data.num_workers=0", f"downstream.tasks=[{CHOICE},{FORTUNES},{GENERATION}]", "downstream.every=4",
         "downstream.k=2", "downstream.limit=20", "downstream.max_new_tokens=8"]
RUNS = ("model.num_layers=1", "model.num_layers=2")


@pytest.mark.slow
def test_a_sweep_folder_is_evaluated_at_every_checkpoint(small_corpus, tmp_path, capsys):
    # The sweep's folder as launch/sweep.py leaves it (its plan in sweep.json, a folder per run), its runs
    # trained by launch/pretrain.py's main on forked ranks (tests/integration/test_sweep.py starts a sweep
    # as users do; here that would cost two more interpreters' imports).
    from megallm.sweep.plan import PLAN_FILE, plan_sweep

    sweep = tmp_path / "sweep"
    plan = plan_sweep([*SWEEP, f"data.path={small_corpus}", f"run_dir={sweep}"])
    sweep.mkdir()
    (sweep / PLAN_FILE).write_text(plan.to_json())
    assert [run.name for run in plan.runs] == list(RUNS)
    for run in plan.runs:
        result = train(run.overrides)
        assert result.returncode == 0, result.stderr[-3000:]

    out = tmp_path / "ladder" / "ladder.json"
    result = run_main(evaluate, [sweep, *TASKS, "--output", out], capsys)
    assert result.returncode == 0, result.stderr[-3000:]
    header, *table = result.stdout.splitlines()
    assert header.split() == ["run", "step", "tokens", "flops", "task", "metric", "value", "stderr"]
    # runs x checkpoints x (two multiple-choice tasks' accuracy and accuracy_norm, the generation task's
    # BLEU, ROUGE-1, ROUGE-2, ROUGE-L and exact match)
    assert len(table) == 2 * 2 * (2 * 2 + 5)

    document = json.loads(out.read_text())
    points = {(p["run"], p["step"]): p for p in document["points"]}
    assert sorted(points) == [(run, step) for run in RUNS for step in (4, 8)]
    for (run, step), point in points.items():
        trained = records(sweep / run, "train")[step]
        assert (point["tokens"], point["flops"]) == (trained["tokens_seen"], trained["flops_seen"]) == \
            (step * 256, point["flops"])
        # The checkpoint scores what the run scored with its live model at that step (one rank: same rows).
        live = records(sweep / run, "downstream")[step]
        for task in point["tasks"]:
            metric = "accuracy" if task["kind"] == "multiple_choice" else "bleu"
            assert task["metrics"][metric] == live[f"{task['task']}/{metric}"], (run, step, task["task"])
    assert points[(RUNS[0], 8)]["params"] < points[(RUNS[1], 8)]["params"]

    with open(out.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(table) and {r["metric"] for r in rows} >= {"accuracy", "accuracy_norm", "bleu"}
    assert {r["chance"] for r in rows if r["task"] == "python_choice"} == {"0.25"}
    assert float(rows[0]["flops"]) == points[(rows[0]["run"], int(rows[0]["step"]))]["flops"]

    import matplotlib.image

    plot = matplotlib.image.imread(out.with_suffix(".png"))
    assert plot.shape[:2] == (504, 1872)  # three panels (one per task) at 120 dpi

    # A run folder: its newest checkpoint, or with --all-checkpoints every one.
    single = tmp_path / "run.json"
    result = run_main(evaluate, [sweep / RUNS[0], *TASKS, "--all-checkpoints", "--output", single], capsys)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p["step"] for p in json.loads(single.read_text())["points"]] == [4, 8]


@pytest.mark.parametrize("extra, phrases", [
    ([], ["pass --output FILE.json"]),
    (["--output", "x.json", "--wandb"], ["--wandb takes one checkpoint", "evaluates several"]),
])
def test_every_checkpoint_needs_an_output_and_no_wandb(extra, phrases, tmp_path, capsys):
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": []}))
    result = run_main(evaluate, [tmp_path, "--task", CHOICE, *extra], capsys)
    assert_one_line_error(result, *phrases, prefix="evaluate: error: ")


def test_a_damaged_sweep_plan_and_an_empty_sweep_are_one_line(tmp_path, capsys):
    (tmp_path / "sweep.json").write_text("{not json")
    result = run_main(evaluate, [tmp_path, "--task", CHOICE, "--output", tmp_path / "x.json"], capsys)
    assert_one_line_error(result, "is not a sweep plan that launch/sweep.py wrote", prefix="evaluate: error: ")
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": [{"name": "a", "run_dir": str(tmp_path / "a")}]}))
    result = run_main(evaluate, [tmp_path, "--task", CHOICE, "--output", tmp_path / "x.json"], capsys)
    assert_one_line_error(result, "no run of sweep folder", "has a checkpoint yet", prefix="evaluate: error: ")
