"""Downstream evaluation during training (megallm.evaluation.during_training), plugged in by
launch/pretrain.py: a `tiny` run at TP=2 x DP=2 with it on logs a "downstream" record every N steps
and at the last, with the numbers tools/evaluate.py gives on the checkpoint of that step, and trains
bitwise the same numbers as the same run without it; what it cannot do is one line before any
process group starts."""

from __future__ import annotations

import json

import pytest

from megallm.cli.evaluate import main as evaluate
from megallm.cli.pretrain import main as pretrain
from tests.helpers import REPO, SMALL_MODEL, assert_one_line_error, records, run_main, train

CHOICE = REPO / "tests" / "fixtures" / "lm_eval" / "choice_task.jsonl"  # python_choice: 8 examples, code
FORTUNES = REPO / "tests" / "fixtures" / "eval" / "fortune_category.jsonl"  # fortune_category: 46, prose
GENERATION = REPO / "tests" / "fixtures" / "lm_eval" / "generation_task.jsonl"
RUN = [*SMALL_MODEL, "model.num_layers=2", "train.precision=fp32", "train.seq_len=64", "train.micro_batch_size=2",
       "train.global_batch_tokens=256", "train.steps=12", "optim.lr=1e-2", "optim.warmup_steps=2", "logging.every=1",
       "train.eval_every=6", "train.eval_batches=2", "checkpoint.every=0", "checkpoint.consolidated=true",
       "data.num_workers=0", "parallel.tp=2", "parallel.zero_stage=1"]
DOWNSTREAM = [f"downstream.tasks=[{CHOICE},{FORTUNES}]", "downstream.every=5", "downstream.k=2",
              "downstream.limit=20", "downstream.batch_size=4"]


@pytest.mark.slow
def test_records_at_every_n_steps_and_training_unchanged(small_corpus, tmp_path, capsys):
    on, off = tmp_path / "on", tmp_path / "off"
    for run_dir, extra in ((on, DOWNSTREAM), (off, [])):
        result = train([*RUN, *extra, f"data.path={small_corpus}", f"run_dir={run_dir}"], nproc=4)
        assert result.returncode == 0, result.stderr[-3000:]

    downstream = records(on, "downstream")
    assert sorted(downstream) == [5, 10, 12]  # every 5 steps, and the last
    assert not (off / "metrics.jsonl").read_text().count('"downstream"')
    last = downstream[12]
    assert last["tokens_seen"] == 12 * 256 and last["flops_seen"] == records(on, "train")[12]["flops_seen"]
    assert last["accuracy"] == (last["python_choice/accuracy"] + last["fortune_category/accuracy"]) / 2
    assert {"python_choice/accuracy_norm", "fortune_category/accuracy_stderr", "seconds"} <= set(last)

    # Bitwise, not within a tolerance: the same layout on the same machine runs the same kernels in the
    # same order, so the runs differ only by the callback, which must change no weight, gradient or RNG
    # draw: any difference at all would be its doing.
    for kind, keys in (("train", ("loss", "grad_norm", "lr")), ("eval", ("val_loss",))):
        with_it, without = records(on, kind), records(off, kind)
        assert sorted(with_it) == sorted(without)
        assert all(with_it[s][k] == without[s][k] for s in with_it for k in keys), kind

    # tools/evaluate.py on the step-12 checkpoint (one process, the consolidated weights) scores the
    # same answers as the run's TP=2 x DP=2 ranks did: the logits gathered over TP, the requests shared
    # out over DP and gathered back in order. Equal, not close: the layouts' fp32 log-likelihoods differ
    # by reduction order (~1e-6), and no example's best two choices lie closer than 0.14 here.
    out = tmp_path / "offline.json"
    result = run_main(evaluate, [on / "checkpoints" / "step_00000012", "--task", CHOICE, "--task", FORTUNES,
                                 "--k", "2", "--limit", "20", "--output", out], capsys)
    assert result.returncode == 0, result.stderr[-3000:]
    for task in json.loads(out.read_text())["tasks"]:
        for metric in ("accuracy", "accuracy_norm"):
            assert last[f"{task['task']}/{metric}"] == task["metrics"][metric], (task["task"], metric)


@pytest.mark.parametrize("world, overrides, phrases", [
    (2, ["parallel.pp=2"], ["parallel.pp=2 splits it into stages", "--all-checkpoints"]),
    (2, ["parallel.zero_stage=3"], ["parallel.zero_stage=3 partitions its weights"]),
    (2, ["parallel.tp=2", f"downstream.tasks=[{GENERATION}]"], ["is a generation task", "parallel.tp=1 only"]),
    (1, ["train.objective=mlm"], ["train.objective=mlm trains an encoder"]),
    (1, ["downstream.tasks=[]"], ["downstream.every=5 needs task files"]),
    (1, ["downstream.tasks=[no/such.jsonl]"], ["downstream.tasks: no/such.jsonl: task file does not exist"]),
    (1, ["downstream.k=8"], ["downstream.k=8 demonstrations asked for", "has 8 examples, so 7"]),
    (1, ["downstream.every=-1"], ["downstream.every must be >= 0"]),
    (1, ["downstream.limit=0"], ["downstream.limit must be >= 1"]),
    (1, [f"downstream.tasks=[{CHOICE},{CHOICE}]"], ["two files are task 'python_choice'"]),
])
def test_what_it_cannot_do_is_one_line_before_start_up(world, overrides, phrases, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    args = [*SMALL_MODEL, f"downstream.tasks=[{CHOICE}]", "downstream.every=5", *overrides,
            f"data.path={tmp_path / 'no_corpus'}", f"run_dir={tmp_path / 'run'}"]
    assert_one_line_error(run_main(pretrain, args, capsys), *phrases)
    assert not (tmp_path / "run").exists()
