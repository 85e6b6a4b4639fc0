"""Damaged checkpoints: each file's SHA-256 is recorded at save and verified before a resume.
A newest checkpoint with flipped bytes, a truncated state file or a deleted file is reported
and the run resumes from the one before (or stops, with checkpoint.on_damaged=stop);
`convert_ckpt.py info` names the damage. A full filesystem during a save is one line and
leaves the earlier checkpoints loadable.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from megallm.checkpoint.state import read_state
from megallm.checkpoint.verify import checkpoint_problem
from megallm.run_layout import LOCK_FILE
from tests.helpers import SMALL_MODEL, assert_one_line_error, records, run_tool, train

pytestmark = pytest.mark.slow

SCHEDULE = ["model.num_layers=2", "train.seq_len=32", "train.micro_batch_size=2", "train.global_batch_tokens=128",
            "train.steps=4", "optim.warmup_steps=2", "optim.lr=3e-3", "logging.every=1", "train.eval_every=0",
            "checkpoint.every=2", "checkpoint.keep_last=0", "data.num_workers=0"]


@pytest.fixture(scope="module")
def finished_run(small_corpus, tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("verify")
    args = [*SMALL_MODEL, *SCHEDULE, f"data.path={small_corpus}"]
    result = train([*args, f"run_dir={root / 'run'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", args


def _flip_bytes(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + count] = bytes(255 - b for b in data[middle:middle + count])
    path.write_bytes(bytes(data))


def _model_file(checkpoint: Path) -> Path:
    return next(checkpoint.rglob("*model_states.pt"))


DAMAGES = {
    "flipped bytes": (lambda ckpt: _flip_bytes(_model_file(ckpt)), "fails its checksum"),
    "truncated state file": (lambda ckpt: (ckpt / "megallm_state.json").write_text('{"step": 4, "consum'),
                             "megallm_state.json is damaged"),
    "deleted file": (lambda ckpt: _model_file(ckpt).unlink(), "missing or truncated"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(finished_run, tmp_path, damage):
    run, args = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    newest = copy / "checkpoints" / "step_00000004"
    harm, phrase = DAMAGES[damage]
    harm(newest)
    assert phrase in checkpoint_problem(newest, distributed=False)
    if damage == "flipped bytes":  # the tool that says what a checkpoint holds verifies it
        assert_one_line_error(run_tool("convert_ckpt", "info", newest), "is damaged", phrase,
                              prefix="convert_ckpt: error: ")
        stop = train([*args, f"run_dir={copy}", "checkpoint.on_damaged=stop"])
        assert_one_line_error(stop, "step_00000004 is damaged", phrase, "checkpoint.on_damaged=fallback")
    result = train([*args, f"run_dir={copy}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"warning: checkpoint {newest} is damaged" in result.stdout or phrase in result.stdout, result.stdout
    assert "resumed from" in result.stdout and "step_00000002" in result.stdout
    # Steps 3 and 4 trained again, the damaged folder kept aside, step 4 saved anew and sound.
    assert (copy / "checkpoints" / "step_00000004.damaged").is_dir()
    assert checkpoint_problem(newest, distributed=False) is None and read_state(newest).step == 4
    assert records(copy, "train")[4]["loss"] == records(run, "train")[4]["loss"]  # bitwise: same layout and kernels


def test_info_verifies_a_sound_checkpoint(finished_run):
    result = run_tool("convert_ckpt", "info", finished_run[0] / "checkpoints" / "step_00000004")
    assert result.returncode == 0 and "verified" in result.stdout, result.stderr


def test_full_filesystem_during_a_save(finished_run, mount_tmpfs, tmp_path):
    """Room for one checkpoint and a half: the second save is refused before it writes."""
    run, args = finished_run
    size = sum(f.stat().st_size for f in (run / "checkpoints" / "step_00000002").rglob("*") if f.is_file())
    small = mount_tmpfs(size * 3 // 2)
    result = train([*args, f"run_dir={tmp_path / 'run'}", f"checkpoint.dir={small}"])
    line = assert_one_line_error(result, "no space left on", "to save step 4", "needs about")
    assert [p.name for p in small.iterdir() if p.name != LOCK_FILE] == ["step_00000002"]  # no .partial left behind
    assert checkpoint_problem(small / "step_00000002", distributed=False) is None
    resumed = train([*args, f"run_dir={tmp_path / 'run'}", f"train.resume={small / 'step_00000002'}",
                     f"checkpoint.dir={tmp_path / 'elsewhere'}"])
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-3000:]
    assert records(tmp_path / "run", "train")[4]["loss"] == records(run, "train")[4]["loss"], line


def pretrain_with_a_low_size_estimate(args: list[str]) -> int:
    """launch/pretrain.py's main, with a first checkpoint's size estimated far too low."""
    from megallm.cli.pretrain import main
    from megallm.train.callbacks import checkpointing

    checkpointing.BYTES_PER_PARAMETER = 0
    return main(args)


def test_disk_full_while_writing(finished_run, mount_tmpfs, tmp_path):
    """The check before the save passes, the filesystem fills up while the ranks write (2 ranks):
    one line, nothing published, no .partial left."""
    run, args = finished_run
    small = mount_tmpfs(1280 * 1024)  # room for the start-up check (1 MiB free, RunFolder.checked), not for step 1
    result = train([*args, f"run_dir={tmp_path / 'run'}", f"checkpoint.dir={small}", "checkpoint.every=0",
                    "train.steps=1", "train.global_batch_tokens=256"], nproc=2, entry=pretrain_with_a_low_size_estimate)
    assert_one_line_error(result, "no space left on", "while saving step 1")
    assert [p.name for p in small.iterdir() if p.name != LOCK_FILE] == []
