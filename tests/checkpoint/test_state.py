"""Which checkpoint a run resumes from, and what it refuses to resume."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest

from megallm.checkpoint.state import STATE_FILE, RunState, check_compatible
from megallm.checkpoint.verify import choose_resume_checkpoint
from megallm.errors import CheckpointError


def find(resume, root, on_damaged="fallback", said=None):
    return choose_resume_checkpoint(resume, root, on_damaged, distributed=False,
                                    say=(said.append if said is not None else print))


def make_checkpoint(root, name, state=None):
    path = root / name
    path.mkdir(parents=True)
    if state is not None:
        (path / STATE_FILE).write_text(json.dumps(asdict(state)))
    return path


def test_auto_resume_takes_newest_sound_checkpoint(tmp_path):
    assert find("auto", tmp_path / "none-yet") is None
    make_checkpoint(tmp_path, "step_00000010", RunState(step=10))
    newest = make_checkpoint(tmp_path, "step_00000020", RunState(step=20))
    make_checkpoint(tmp_path, "step_00000030.partial", RunState(step=30))  # crashed mid-save
    make_checkpoint(tmp_path, "step_00000040")  # its state file deleted
    with pytest.raises(CheckpointError, match="step_00000040 has no megallm_state.json"):
        find("auto", tmp_path, on_damaged="stop")
    with pytest.raises(CheckpointError, match="has no megallm_state.json"):
        find(str(tmp_path / "step_00000040"), tmp_path)
    said = []
    assert find("auto", tmp_path, said=said) == newest
    assert len(said) == 1 and said[0].startswith("warning: checkpoint") and "step_00000040.damaged" in said[0]
    assert (tmp_path / "step_00000040.damaged").is_dir() and not (tmp_path / "step_00000040").exists()
    assert find("none", tmp_path) is None
    assert find(str(newest), tmp_path) == newest


def test_incompatible_checkpoints_are_refused(tmp_path):
    saved = RunState(layout={"tp": 1, "pp": 1, "dp": 2, "zero_stage": 1}, model={"name": "a", "num_layers": 2},
                     tokenizer_sha256="abc", seq_len=64)
    check_compatible(saved, RunState(**{**asdict(saved), "model": {"name": "renamed", "num_layers": 2}}), tmp_path)
    with pytest.raises(CheckpointError, match=r"layout TP=1 x PP=1 x DP=2 ZeRO-1 but this run uses TP=1 x PP=1 x DP=4 ZeRO-1"):
        check_compatible(saved, RunState(**{**asdict(saved), "layout": replace(saved.layout, dp=4)}), tmp_path)
    with pytest.raises(CheckpointError, match="tokenizer abc"):
        check_compatible(saved, RunState(**{**asdict(saved), "tokenizer_sha256": "xyz"}), tmp_path)
    with pytest.raises(CheckpointError, match="train.seq_len=64"):
        check_compatible(saved, RunState(**{**asdict(saved), "seq_len": 128}), tmp_path)
