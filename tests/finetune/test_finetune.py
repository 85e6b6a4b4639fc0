"""launch/finetune.py end to end: a small causal model pretrained here, then fine-tuned as a
classifier (one process, TP=2, PP=2, and from its Hugging Face export: the same numbers),
from random weights for comparison, and on prompt / response pairs; and the bad inputs that
must stop it in one line before anything is written. (Response-only losses in data-parallel
layouts: the masked-LM case of tests/integration/test_parallel_equality.py runs the same
normalisation.)"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from megallm.cli.finetune import main as finetune_main
from tests.helpers import REPO, SMALL_MODEL, assert_one_line_error, records, run_main, run_tool, train

pytestmark = pytest.mark.slow

EVAL = REPO / "tests" / "fixtures" / "eval"
FORTUNES = EVAL / "fortunes_classification"
STEPS = 8
SCHEDULE = ["train.precision=fp32", "train.seq_len=64", "train.micro_batch_size=2", "train.global_batch_tokens=512",
            f"train.steps={STEPS}", "optim.lr=2e-3", "optim.warmup_steps=2", "logging.every=1",
            f"train.eval_every={STEPS // 2}", "checkpoint.every=0"]
CLASSIFY = ["finetune.task=classify", f"finetune.train_file={FORTUNES / 'train.jsonl'}",
            f"finetune.val_file={FORTUNES / 'validation.jsonl'}"]
SFT = ["finetune.task=sft", f"finetune.train_file={EVAL / 'docstring.jsonl'}", "finetune.prompt_field=input",
       "finetune.response_field=target", "finetune.val_fraction=0.2"]


def run_finetune(args: list[str], nproc: int = 1):
    return train(args, nproc=nproc, entry=finetune_main)


@pytest.fixture(scope="module")
def pretrained(small_corpus, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pretrained")
    result = train([*SMALL_MODEL, f"data.path={small_corpus}", f"run_dir={run_dir}", "train.steps=12",
                    "train.seq_len=64", "train.micro_batch_size=4", "train.global_batch_tokens=512",
                    "optim.warmup_steps=2", "optim.lr=3e-3", "train.eval_every=0", "checkpoint.every=0"])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def runs(pretrained, tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    exported = run_tool("convert_ckpt", "export", pretrained, root / "hf")
    assert exported.returncode == 0, exported.stderr[-3000:]
    out = {"root": root}
    for name, nproc, init, extra in (
            ("classify", 1, pretrained, CLASSIFY), ("classify_tp2", 2, pretrained, [*CLASSIFY, "parallel.tp=2"]),
            ("classify_pp2", 2, pretrained, [*CLASSIFY, "+parallel=pp2"]),
            ("classify_from_hf", 1, root / "hf", CLASSIFY),
            ("classify_scratch", 1, pretrained, [*CLASSIFY, "finetune.pretrained=false"]),
            ("sft", 1, pretrained, SFT)):
        result = run_finetune([f"finetune.init={init}", *SCHEDULE, *extra, f"run_dir={root / name}"], nproc)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        out[name] = result
    return out


@pytest.mark.parametrize("layout,baseline", [("classify_tp2", "classify"), ("classify_pp2", "classify"),
                                             ("classify_from_hf", "classify")])
def test_layouts_fine_tune_to_the_same_numbers(runs, layout, baseline):
    ref, got = records(runs["root"] / baseline, "train"), records(runs["root"] / layout, "train")
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in got:
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5), step
    ref_eval, got_eval = records(runs["root"] / baseline, "eval"), records(runs["root"] / layout, "eval")
    for key in ("val_loss", "val_accuracy", "val_macro_f1"):
        if key in ref_eval[STEPS]:
            assert got_eval[STEPS][key] == pytest.approx(ref_eval[STEPS][key], rel=1e-5), key


def test_classifier_reports_accuracy_macro_f1_and_the_majority_baseline(runs):
    record = records(runs["root"] / "classify", "eval")[STEPS]
    labels = [json.loads(line)["label"] for line in (FORTUNES / "validation.jsonl").read_text().splitlines()
              if line.strip()]
    assert record["val_examples"] == len(labels)
    assert record["val_majority_accuracy"] == pytest.approx(Counter(labels).most_common(1)[0][1] / len(labels))
    assert 0 <= record["val_macro_f1"] <= 1 and 0 <= record["val_accuracy"] <= 1
    assert "pretrained weights loaded; new: classifier.proj" in runs["classify"].stdout
    assert "val_accuracy" in runs["classify"].stdout  # the console line shows the scores
    scratch = records(runs["root"] / "classify_scratch", "train")
    assert scratch[1]["loss"] != records(runs["root"] / "classify", "train")[1]["loss"]
    assert "from random initial weights" in runs["classify_scratch"].stdout


def test_supervised_pairs_report_the_response_loss(runs):
    assert "sft:" in runs["sft"].stdout and "windows" in runs["sft"].stdout
    loss = records(runs["root"] / "sft", "eval")[STEPS]["val_loss"]
    assert 0 < loss < 10


@pytest.mark.parametrize("rows,extra,phrases", [
    ('{"text": "fine", "label": "science"}\n{"text": "odd", "label": "astrology"}\n', [],
     ["val.jsonl:2: label 'astrology' is not among the", "labels of the training rows"]),
    ('{"text": "fine", "label": "science"}\n{"text": "broken", "label": \n', [], ["val.jsonl:2", "not valid JSON"]),
    ('{"text": "fine", "label": "science"}\n', ["finetune.task=sft"], ["no 'prompt'"]),
])
def test_bad_rows_stop_in_one_line(pretrained, tmp_path, capsys, rows, extra, phrases):
    (tmp_path / "val.jsonl").write_text(rows)
    result = run_main(finetune_main, [f"finetune.init={pretrained}", *CLASSIFY, f"finetune.val_file={tmp_path}/val.jsonl",
                                      *extra, f"run_dir={tmp_path}/run"], capsys)
    assert_one_line_error(result, *phrases, prefix="finetune: error: ")
    assert not (tmp_path / "run").exists()


def test_missing_init_is_one_line(tmp_path, capsys):
    result = run_main(finetune_main, [*CLASSIFY, f"run_dir={tmp_path}/run"], capsys)
    assert_one_line_error(result, "finetune.init is required", prefix="finetune: error: ")
    result = run_main(finetune_main, [f"finetune.init={tmp_path}/nothing", *CLASSIFY], capsys)
    assert_one_line_error(result, "does not exist", prefix="finetune: error: ")


def test_downstream_evaluation_is_refused_in_one_line(pretrained, tmp_path, capsys):
    """downstream.* plugs into pretraining only: a fine-tuning given it says so rather than ignore it."""
    result = run_main(finetune_main, [f"finetune.init={pretrained}", *CLASSIFY, f"run_dir={tmp_path}/run",
                                      "downstream.every=5", f"downstream.tasks=[{EVAL / 'fortune_category.jsonl'}]"],
                      capsys)
    assert_one_line_error(result, "downstream.every=5: downstream evaluation plugs into pretraining",
                          prefix="finetune: error: ")
    assert not (tmp_path / "run").exists()


def test_a_classifier_is_not_exported_as_a_language_model(runs, tmp_path):
    result = run_tool("convert_ckpt", "export", runs["root"] / "classify", tmp_path / "hf")
    assert_one_line_error(result, "is a sequence classifier", "only language models are exported",
                          prefix="convert_ckpt: error: ")
    assert not (tmp_path / "hf").exists()
