"""One run per run folder: a second run is refused with one line naming the first; the lock of
a run that ended (its process gone) is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from megallm.errors import ConfigError
from megallm.run_layout import LOCK_FILE
from megallm.train.run_lock import RunLock


def test_second_run_refused_until_the_first_ends(tmp_path):
    first = RunLock(tmp_path / "run").acquire()
    with pytest.raises(ConfigError, match=rf"run_dir {tmp_path / 'run'} is in use by another run \(pid {os.getpid()} "):
        RunLock(tmp_path / "run").acquire()
    first.release()
    RunLock(tmp_path / "run").acquire().release()


def test_lock_of_a_dead_run_is_taken_over(tmp_path):
    """A run killed outright leaves its lock file; the kernel dropped its flock, so the next run takes it."""
    code = (f"from megallm.train.run_lock import RunLock; RunLock({str(tmp_path)!r}).acquire(); "
            "import os; os._exit(0)")  # no release: as if killed
    subprocess.run([sys.executable, "-c", code], check=True)
    dead = json.loads((tmp_path / LOCK_FILE).read_text())
    assert dead["host"] == socket.gethostname() and dead["pid"] != os.getpid()
    lock = RunLock(tmp_path).acquire()
    assert lock.took_over["pid"] == dead["pid"]
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.slow
def test_training_in_a_folder_in_use_is_one_line(small_corpus, tmp_path):
    from tests.helpers import SMALL_MODEL, assert_one_line_error, train

    held = RunLock(tmp_path / "run").acquire()
    result = train([*SMALL_MODEL, "train.steps=1", "train.seq_len=32", "train.micro_batch_size=2",
                    "train.global_batch_tokens=128", f"data.path={small_corpus}", f"run_dir={tmp_path / 'run'}"])
    assert_one_line_error(result, "is in use by another run", f"pid {os.getpid()}")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_FILE]  # nothing else written
    held.release()
