"""Checkpoints that never launder damage, and conversions that fail in one line.

A one-process run saves steps 2 and 4 into a `checkpoint.dir` outside its run folder. Then:
- 64 flipped bytes in a weights file: `convert_ckpt.py export` and `reshard` refuse in one
  line naming the file, and write nothing (no OUT, no new checksums over the damage);
- a one-bit edit of `step` or `consumed_samples` in `megallm_state.json` is damage (the run
  falls back to step 2, or stops under checkpoint.on_damaged=stop), and so is a deleted
  `checksums` list; checkpoints of earlier megallm versions (no state checksum, or no
  checksums at all) still verify and resume;
- an output on a read-only filesystem, or on one too small (before the write, or filling
  up during it), is one line naming it, the partial output removed, the source intact;
- the run folder alone finds its checkpoints through its config's checkpoint.dir.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from megallm.checkpoint.state import STATE_FILE, RunState
from megallm.checkpoint.verify import checkpoint_problem
from megallm.cli.convert_ckpt import main as convert_main
from tests.helpers import (
    SMALL_MODEL,
    assert_one_line_error,
    records,
    run_main,
    train,
    tree_digest,
)

SCHEDULE = ["model.num_layers=2", "train.seq_len=32", "train.micro_batch_size=2", "train.global_batch_tokens=128",
            "train.steps=4", "optim.warmup_steps=2", "optim.lr=3e-3", "logging.every=1", "train.eval_every=0",
            "checkpoint.every=2", "checkpoint.keep_last=0", "data.num_workers=0"]
ERROR = "convert_ckpt: error: "
RESHARD_TO = ["--tp", 1, "--pp", 1, "--dp", 2, "--zero-stage", 1]


@pytest.fixture(scope="module")
def finished_run(small_corpus, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """(run folder, its checkpoint.dir elsewhere, the run's arguments without run_dir and checkpoint.dir)."""
    root = tmp_path_factory.mktemp("integrity")
    args = [*SMALL_MODEL, *SCHEDULE, f"data.path={small_corpus}"]
    result = train([*args, f"run_dir={root / 'run'}", f"checkpoint.dir={root / 'elsewhere'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", root / "elsewhere", args


@pytest.fixture
def convert(capsys):
    """tools/convert_ckpt.py's main in this process: (exit code, stdout, stderr)."""
    return lambda *args: run_main(convert_main, list(args), capsys)


def _copy(checkpoints: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "checkpoints"
    shutil.copytree(checkpoints, copy, ignore=shutil.ignore_patterns(".megallm.lock"))
    return copy


def _model_file(checkpoint: Path) -> Path:
    return next(checkpoint.rglob("*model_states.pt"))


def _flip_bytes(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + count] = bytes(255 - b for b in data[middle:middle + count])
    path.write_bytes(bytes(data))


def _flip_lowest_bit_of(checkpoint: Path, key: str) -> int:
    """Flip one bit of `key`'s value in the state file (its last digit's lowest bit); the new value."""
    state_file = checkpoint / STATE_FILE
    text = state_file.read_text()
    start = text.index(f'"{key}": ') + len(f'"{key}": ')
    end = start
    while text[end].isdigit():
        end += 1
    value = text[start:end]
    edited = value[:-1] + chr(ord(value[-1]) ^ 1)
    state_file.write_text(text[:start] + edited + text[end:])
    return int(edited)


def _edit_state(checkpoint: Path, drop: tuple[str, ...]) -> None:
    fields = json.loads((checkpoint / STATE_FILE).read_text())
    (checkpoint / STATE_FILE).write_text(json.dumps({k: v for k, v in fields.items() if k not in drop}, indent=1))


@pytest.mark.slow
def test_damaged_weights_are_neither_exported_nor_resharded(finished_run, tmp_path, convert):
    _, checkpoints, _ = finished_run
    damaged = _copy(checkpoints, tmp_path) / "step_00000004"
    _flip_bytes(_model_file(damaged))
    weights_file = str(_model_file(damaged).relative_to(damaged))
    before, listing = tree_digest(damaged), sorted(p.name for p in tmp_path.iterdir())
    for command in (["export", damaged, tmp_path / "hf"], ["reshard", damaged, tmp_path / "dp2", *RESHARD_TO]):
        assert_one_line_error(convert(*command), f"checkpoint {damaged} is damaged",
                              f"{weights_file} (fails its checksum)", prefix=ERROR)
        assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no OUT, no OUT.partial, no work folder
        assert tree_digest(damaged) == before  # no new checksums written over the damage


@pytest.mark.slow
def test_an_edited_state_file_is_damage(finished_run, tmp_path):
    run, checkpoints, args = finished_run
    copy = _copy(checkpoints, tmp_path)
    newest = copy / "step_00000004"
    assert json.loads((newest / STATE_FILE).read_text())["consumed_samples"] == 16
    assert _flip_lowest_bit_of(newest, "consumed_samples") == 17
    stopped = train([*args, f"run_dir={tmp_path / 'stopped'}", f"checkpoint.dir={copy}", "checkpoint.on_damaged=stop"])
    assert_one_line_error(stopped, f"checkpoint {newest}: {STATE_FILE} fails its checksum",
                          "checkpoint.on_damaged=fallback")
    shutil.rmtree(copy)
    copy = _copy(checkpoints, tmp_path)
    assert _flip_lowest_bit_of(newest, "step") == 5
    assert f"{STATE_FILE} fails its checksum" in checkpoint_problem(newest, distributed=False)
    resumed = train([*args, f"run_dir={tmp_path / 'resumed'}", f"checkpoint.dir={copy}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {copy / 'step_00000002'} at step 2" in resumed.stdout, resumed.stdout
    assert (copy / "step_00000004.damaged").is_dir() and checkpoint_problem(newest, distributed=False) is None
    assert records(tmp_path / "resumed", "train")[4]["loss"] == records(run, "train")[4]["loss"]


@pytest.mark.slow
def test_a_deleted_checksum_list_is_damage(finished_run, tmp_path, convert):
    _, checkpoints, _ = finished_run
    newest = _copy(checkpoints, tmp_path) / "step_00000004"
    _flip_bytes(_model_file(newest))
    _edit_state(newest, drop=("checksums",))
    assert "megallm_state.json fails its checksum" in checkpoint_problem(newest, distributed=False)
    _edit_state(newest, drop=("checksums", "state_sha256"))  # its format still says it had them
    assert "megallm_state.json has lost its own checksum" in checkpoint_problem(newest, distributed=False)
    assert_one_line_error(convert("info", newest), f"checkpoint {newest}", prefix=ERROR)


@pytest.mark.slow
def test_checkpoints_of_earlier_versions_still_resume(finished_run, tmp_path, convert):
    run, checkpoints, args = finished_run
    copy = _copy(checkpoints, tmp_path)
    with_checksums, sizes_only = copy / "step_00000004", copy / "step_00000002"
    _edit_state(with_checksums, drop=("format", "state_sha256"))  # as megallm wrote it before the state checksum
    _edit_state(sizes_only, drop=("format", "state_sha256", "checksums"))  # before checksums
    assert checkpoint_problem(with_checksums, distributed=False) is None
    assert "files verified (SHA-256)" in convert("info", with_checksums).stdout
    assert "no checksums: an older checkpoint" in convert("info", sizes_only).stdout
    resumed = train([*args, f"run_dir={tmp_path / 'resumed'}", f"train.resume={sizes_only}",
                     f"checkpoint.dir={tmp_path / 'new'}"])
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-3000:]
    assert records(tmp_path / "resumed", "train")[4]["loss"] == records(run, "train")[4]["loss"]


@pytest.mark.slow
def test_read_only_outputs_are_one_line(finished_run, tmp_path, mount_tmpfs, convert):
    _, checkpoints, _ = finished_run
    source = _copy(checkpoints, tmp_path) / "step_00000004"
    read_only = mount_tmpfs(1 << 20, read_only=True)
    for command in (["export", source, read_only / "hf"], ["reshard", source, read_only / "dp2", *RESHARD_TO]):
        assert_one_line_error(convert(*command), f"cannot write {read_only / command[2].name}: {read_only} is on a "
                                                 "read-only filesystem", prefix=ERROR)


@pytest.mark.slow
def test_a_full_filesystem_is_one_line(finished_run, tmp_path, mount_tmpfs, convert, monkeypatch):
    _, checkpoints, _ = finished_run
    source = _copy(checkpoints, tmp_path) / "step_00000004"
    before = tree_digest(source)
    small = mount_tmpfs(256 << 10)
    # Too small before the write: refused before anything is read, naming the mount and the size.
    for command in (["export", source, small / "hf"], ["reshard", source, small / "dp2", *RESHARD_TO]):
        line = assert_one_line_error(convert(*command), f"no space left on {small} for {small / command[2].name}: "
                                                        "it needs about ", "B free", prefix=ERROR)
        assert f"{source} is intact" in line and list(small.iterdir()) == []
    # Filling up while writing (the size estimates made too low): one line, the partial output removed.
    from megallm.checkpoint import convert as conversions

    monkeypatch.setattr(conversions, "export_bytes", lambda *_: 0)
    monkeypatch.setattr(conversions, "reshard_bytes", lambda *_: 0)
    for command in (["export", source, small / "hf"], ["reshard", source, small / "dp2", *RESHARD_TO]):
        result = convert(*command)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"{ERROR}no space left on {small} while writing {small / command[2].name}"), last
        assert list(small.iterdir()) == []
    assert tree_digest(source) == before


@pytest.mark.slow
def test_a_run_folder_finds_its_checkpoint_dir(finished_run, tmp_path, mount_tmpfs, convert):
    run, checkpoints, _ = finished_run
    result = convert("info", run)
    assert result.returncode == 0 and f"megallm checkpoint {checkpoints / 'step_00000004'} (step 4" in result.stdout, \
        result.stderr
    result = convert("export", run, tmp_path / "hf", "--no-verify")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hf" / "config.json").is_file()
    # and an import onto a read-only filesystem is one line too
    read_only = mount_tmpfs(1 << 20, read_only=True)
    assert_one_line_error(convert("import", tmp_path / "hf", read_only / "ckpt", "--weights-only", "--no-verify"),
                          f"{read_only} is on a read-only filesystem", prefix=ERROR)


def test_a_relative_checkpoint_dir_is_taken_from_where_the_run_started(tmp_path, monkeypatch):
    """A run started in PROJECT with run_dir=runs/a and checkpoint.dir=ckpt/a, looked up from elsewhere."""
    from megallm.checkpoint.convert import resolve_checkpoint

    project = tmp_path / "project"
    (project / "runs" / "a").mkdir(parents=True)
    (project / "runs" / "a" / "config.yaml").write_text(
        yaml.safe_dump({"run_dir": "runs/a", "checkpoint": {"dir": "ckpt/a"}}))
    for step in (2, 4):
        (project / "ckpt" / "a" / f"step_{step:08d}").mkdir(parents=True)
        (project / "ckpt" / "a" / f"step_{step:08d}" / STATE_FILE).write_text(RunState(step=step).to_json())
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint(project / "runs" / "a") == project / "ckpt" / "a" / "step_00000004"
    assert resolve_checkpoint(Path("project/runs/a")).resolve() == project / "ckpt" / "a" / "step_00000004"
