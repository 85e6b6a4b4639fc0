"""A run's folders at start-up: a `run_dir` (or `checkpoint.dir`) that cannot be written is one
line before any process group starts, and a run refused at any point before its first step
leaves nothing behind: no run folder, no lock file, no config.yaml.

Path checks run through the entry point's `main` in this process (they end before any
process group); refusals that come after the run folder is locked run on a forked rank
(`train`); the real script is started once, as the README writes it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from megallm.cli.pretrain import main
from megallm.errors import ConfigError
from megallm.run_layout import LOCK_FILE
from megallm.train.run_folder import RunFolder
from megallm.train.run_lock import RunLock
from tests.helpers import SMALL_MODEL, assert_one_line_error, run_main, run_pretrain, train

SHORT_RUN = [*SMALL_MODEL, "train.steps=1", "train.seq_len=32", "train.micro_batch_size=2",
             "train.global_batch_tokens=128", "data.num_workers=0"]


def fill(folder: Path) -> None:
    """Write into `folder` until its filesystem is full."""
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def contents(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("where,phrases", [
    (lambda tmp: f"run_dir={tmp / 'a_file'}", ["run_dir=", "a_file exists and is not a folder"]),
    (lambda tmp: f"run_dir={tmp / 'a_file' / 'run'}", ["lies under", "a_file, which is not a folder"]),
    (lambda tmp: f"checkpoint.dir={tmp / 'a_file' / 'ckpt'}",
     ["checkpoint.dir=", "lies under", "a_file, which is not a folder"]),
])
def test_run_dir_that_is_a_file_or_under_one(where, phrases, small_corpus, tmp_path, capsys):
    """Was a FileExistsError / NotADirectoryError traceback from inside the process group."""
    (tmp_path / "a_file").write_text("notes\n")
    before = contents(tmp_path)
    result = run_main(main, [*SHORT_RUN, f"data.path={small_corpus}", f"run_dir={tmp_path / 'run'}", where(tmp_path)],
                      capsys)
    assert_one_line_error(result, *phrases, "choose a folder")
    assert contents(tmp_path) == before and (tmp_path / "a_file").read_text() == "notes\n"


def test_empty_run_dir_is_refused(small_corpus, tmp_path, capsys, monkeypatch):
    """`run_dir=` trained into the current directory without a word."""
    monkeypatch.chdir(tmp_path)
    result = run_main(main, [*SHORT_RUN, f"data.path={small_corpus}", "run_dir="], capsys)
    assert_one_line_error(result, "run_dir is empty", "current directory", "run_dir=runs/NAME")
    assert contents(tmp_path) == []


def test_read_only_and_full_filesystems(small_corpus, mount_tmpfs, capsys):
    read_only = mount_tmpfs(1 << 20, read_only=True)
    full = mount_tmpfs(256 << 10)
    fill(full)
    args = [*SHORT_RUN, f"data.path={small_corpus}"]
    assert_one_line_error(run_main(main, [*args, f"run_dir={read_only / 'run'}"], capsys),
                          f"run_dir={read_only / 'run'} cannot be created in {read_only}", "read-only filesystem")
    assert_one_line_error(run_main(main, [*args, f"run_dir={read_only}"], capsys),
                          f"run_dir={read_only} cannot be written", "read-only filesystem")
    assert_one_line_error(run_main(main, [*args, f"run_dir={full / 'runs' / 'run'}"], capsys),
                          f"cannot be created in {full}", "filesystem is full", "free some space")
    assert contents(full) == ["filler"]


def test_writes_that_fail_at_start_up_are_one_line_and_leave_nothing(mount_tmpfs, tmp_path):
    """Past the checks before start (the disk fills meanwhile): the lock and config.yaml writes are a
    ConfigError (one line on every rank), and the lock takes away the folders it made."""
    full = mount_tmpfs(256 << 10)
    fill(full)
    with pytest.raises(ConfigError, match=r"run_dir=.*/new/run cannot be written: No space left on device .*"
                                          "free some space"):
        RunLock(full / "new" / "run").acquire()
    assert contents(full) == ["filler"]
    (full / "filler").unlink()
    (full / "run").mkdir()
    fill(full)
    with pytest.raises(ConfigError, match="cannot be written: No space left on device"):
        RunFolder(full / "run", full / "run" / "checkpoints").write_config("model: {}\n" * 10_000)


def test_a_lock_abandoned_removes_only_what_it_made(tmp_path):
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    lock = RunLock(tmp_path / "kept").acquire()
    lock.abandon()
    assert contents(tmp_path / "kept") == ["notes.txt"]  # the folder was there: only the lock file goes
    lock = RunLock(tmp_path / "made" / "deeper" / "run").acquire()
    (tmp_path / "made" / "deeper" / "run" / "config.yaml").write_text("written while holding the lock")
    lock.abandon()
    assert contents(tmp_path) == ["kept", "kept/notes.txt"]
    held = RunLock(tmp_path / "kept").acquire()
    with pytest.raises(ConfigError, match="in use by another run"):
        RunLock(tmp_path / "kept").acquire()
    assert (tmp_path / "kept" / LOCK_FILE).exists()  # the holder's lock stays
    held.release()


# ---- refusals after the run folder is locked: on a forked rank ---------------------------------------
@pytest.fixture(scope="module")
def other_model_checkpoint(small_corpus, tmp_path_factory) -> Path:
    """A one-step run's checkpoint of SMALL_MODEL with 2 layers."""
    run_dir = tmp_path_factory.mktemp("other") / "run"
    result = train([*SHORT_RUN, "model.num_layers=2", f"data.path={small_corpus}", f"run_dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "checkpoints" / "step_00000001"


def pretrain_without_wandb_account(args: list[str]) -> int:
    """launch/pretrain.py's main where W&B finds no API key (no WANDB_API_KEY, no netrc)."""
    os.environ.pop("WANDB_API_KEY", None)
    os.environ["NETRC"] = os.devnull
    return main(args)


@pytest.mark.slow
def test_refusals_after_the_lock_leave_no_run_folder(other_model_checkpoint, small_corpus, tmp_path):
    """7 of 35 refused configs left a run folder (the lock file at least, or config.yaml and
    metrics.jsonl); W&B without an account was a traceback."""
    run_dir = tmp_path / "runs" / "new"
    args = [*SHORT_RUN, f"data.path={small_corpus}", f"run_dir={run_dir}"]
    cases = [
        (["train.resume=/nowhere/step_00000100"], ["train.resume=/nowhere/step_00000100 does not exist"], main),
        ([f"train.resume={other_model_checkpoint}"], ["holds a different model", "model.num_layers: saved 2"], main),
        (["logging.wandb.enabled=true", "logging.wandb.mode=online"],
         ["W&B did not start in mode online", "logging.wandb.mode=offline needs no account"],
         pretrain_without_wandb_account),
    ]
    for extra, phrases, entry in cases:
        assert_one_line_error(train([*args, *extra], entry=entry), *phrases)
        assert not (tmp_path / "runs").exists(), extra
    shared = tmp_path / "shared_checkpoints"
    held = RunLock(shared, "checkpoint.dir").acquire()  # another run saves there
    assert_one_line_error(train([*args, f"checkpoint.dir={shared}"]), f"checkpoint.dir {shared} is in use")
    assert not (tmp_path / "runs").exists() and contents(shared) == [LOCK_FILE]
    held.release()


@pytest.mark.slow
def test_script_with_run_dir_a_file(small_corpus, tmp_path):
    """`python launch/pretrain.py +model=tiny run_dir=...` as users type it: one line, exit 2."""
    (tmp_path / "runs").write_text("")
    result = run_pretrain(["+model=tiny", f"data.path={small_corpus}", f"run_dir={tmp_path / 'runs' / 'tiny'}",
                           "train.steps=2", "train.seq_len=64", "train.micro_batch_size=2",
                           "train.global_batch_tokens=256"])
    assert_one_line_error(result, f"run_dir={tmp_path / 'runs' / 'tiny'} lies under {tmp_path / 'runs'}")
    assert "Traceback" not in result.stderr and contents(tmp_path) == ["runs"]
