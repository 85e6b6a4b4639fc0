"""A run folder's map (megallm.run_layout), and every tool that is handed a run folder finding its
checkpoints through it, where checkpoint.dir put them outside the run folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from megallm.cli.finetune import main as finetune_main
from megallm.run_layout import CHECKPOINTS_DIR, RunPaths, is_run_folder
from tests.helpers import REPO, SMALL_MODEL, records, run_tool, train

FORTUNES = REPO / "tests" / "fixtures" / "eval" / "fortunes_classification"


def write_config(run: Path, config) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config) if not isinstance(config, str) else config)


def test_the_map_of_a_configured_run():
    paths = RunPaths.of_settings("runs/a")
    assert (paths.checkpoints, paths.config, paths.metrics, paths.wandb_run_id) == (
        Path("runs/a/checkpoints"), Path("runs/a/config.yaml"), Path("runs/a/metrics.jsonl"), Path("runs/a/wandb_run_id"))
    assert paths.sample_trace(3) == Path("runs/a/samples/dp_rank_00003.jsonl")
    assert not paths.keeps_checkpoints_elsewhere
    assert RunPaths.of_settings("runs/a", "/scratch/a").checkpoints == Path("/scratch/a")
    assert RunPaths.of_settings("runs/a", "/scratch/a").keeps_checkpoints_elsewhere


@pytest.mark.parametrize("config, expected", [
    ({"run_dir": "r", "checkpoint": {"dir": "/abs/ckpt"}}, Path("/abs/ckpt")),
    ({"run_dir": "r", "checkpoint": {"dir": None}}, None),  # the default: <run>/checkpoints
    ({"run_dir": "r", "checkpoint": "not a section"}, None),
    ("run_dir: [unclosed", None),  # unreadable YAML: the default
    ("\udcff", None),
])
def test_a_run_folder_names_its_checkpoint_dir_in_its_config(tmp_path, config, expected):
    run = tmp_path / "r"
    if config == "\udcff":
        run.mkdir()
        (run / "config.yaml").write_bytes(b"\xff\xfe\x00bad")
    else:
        write_config(run, config)
    assert RunPaths.of_folder(run).checkpoints == (expected or run / CHECKPOINTS_DIR)
    assert RunPaths.of_folder(tmp_path / "no_config").checkpoints == tmp_path / "no_config" / CHECKPOINTS_DIR
    assert not is_run_folder(run)  # config.yaml alone: no metrics.jsonl


@pytest.mark.slow
def test_tools_find_the_checkpoints_of_a_run_under_checkpoint_dir(small_corpus, tmp_path):
    """export, generate, evaluate and fine-tune, each handed the run folder only."""
    run, elsewhere = tmp_path / "run", tmp_path / "scratch" / "ckpt"
    trained = train([*SMALL_MODEL, f"data.path={small_corpus}", f"run_dir={run}", f"checkpoint.dir={elsewhere}",
                     "train.steps=4", "train.seq_len=64", "train.micro_batch_size=4", "train.global_batch_tokens=512",
                     "optim.warmup_steps=1", "train.eval_every=0", "checkpoint.every=4"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert not (run / CHECKPOINTS_DIR).exists() and (elsewhere / "step_00000004").is_dir()

    exported = run_tool("convert_ckpt", "export", run, tmp_path / "hf")
    assert exported.returncode == 0 and f"{elsewhere}/step_00000004" in exported.stderr, exported.stderr
    generated = run_tool("generate", run, "--prompt", "def main(", "--max-new-tokens", "4")
    assert generated.returncode == 0 and "def main(" in generated.stdout, generated.stderr
    evaluated = run_tool("evaluate", run, "--perplexity", small_corpus, "--split", "val", "--limit", "4")
    assert evaluated.returncode == 0 and f"{elsewhere}/step_00000004" in evaluated.stdout + evaluated.stderr, \
        evaluated.stderr
    tuned = train([f"finetune.init={run}", "finetune.task=classify", f"finetune.train_file={FORTUNES / 'train.jsonl'}",
                   f"finetune.val_file={FORTUNES / 'validation.jsonl'}", f"run_dir={tmp_path / 'tuned'}",
                   "train.seq_len=64", "train.micro_batch_size=2", "train.global_batch_tokens=256", "train.steps=2",
                   "train.eval_every=2", "checkpoint.every=0", "optim.warmup_steps=1"], entry=finetune_main)
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert 0 <= records(tmp_path / "tuned", "eval")[2]["val_accuracy"] <= 1
