"""A rank that fails after the data loader started ends the job: within seconds, in one line, and
with no process left behind (ranks, loader workers).

Real 2-rank torchrun jobs with loader workers, as the field report ran them:
- `optim.lr=3e38`: Adam's update overflows float in step 1, on every rank;
- SIGKILL of one loader worker of rank 1 mid-run: rank 1 alone fails, while rank 0 waits for it
  in a collective; rank 1 must say so itself.
Before, each left the ranks joining loader workers that ignore SIGTERM, for ever.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, SMALL_MODEL, alive, clean_environment, descendants, logged_steps

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")]

SCHEDULE = [*SMALL_MODEL, "model.num_layers=2", "train.seq_len=32", "train.micro_batch_size=2",
            "train.global_batch_tokens=256", "optim.warmup_steps=2", "logging.every=1", "train.eval_every=0",
            "checkpoint.every=0", "data.num_workers=1", "train.precision=fp32"]
START_S = 400  # imports and rendezvous of two ranks on two busy cores
FAULT_TO_EXIT_S = 60  # the fault's job must have ended this long after it (seconds, under load)
EXIT_TO_CLEAN_S = 10  # and every process it started, this long after torchrun


class Job:
    """A torchrun job of launch/pretrain.py, watched: every process ever seen below torchrun is kept."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(REPO / "launch" / "pretrain.py"), *args],
            cwd=REPO, env=clean_environment(), stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.seen: set[int] = set()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:  # the test failed while it ran: leave nothing to the rest of the suite
            self.kill()

    def watch(self) -> None:
        if self.process.poll() is None:
            self.seen |= _below(self.process.pid)

    def ranks(self) -> dict[int, int]:
        """{rank: pid} of the ranks running now."""
        found = {}
        for pid in _below(self.process.pid):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if Path(f"/proc/{pid}/stat").read_text().split()[3] == str(self.process.pid):
                    found.update({int(v[5:]): pid for v in environ if v.startswith(b"RANK=")})
            except (OSError, IndexError):
                pass
        return found

    def loader_workers(self) -> dict[int, list[int]]:
        """{rank: pids of its loader workers}: its children forked without an exec (a compiler that
        DeepSpeed runs is another program)."""
        found = {}
        for rank, pid in self.ranks().items():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
                found[rank] = sorted(child for child in _below(pid) if _command(child) == command)
            except OSError:
                pass
        return found

    def wait_until(self, condition, seconds: float) -> bool:
        """True once `condition()` holds; False if the job ended first or `seconds` passed."""
        deadline = time.time() + seconds
        while time.time() < deadline and self.process.poll() is None:
            self.watch()
            if condition():
                return True
            time.sleep(0.05)
        return False

    def end(self, seconds: float) -> float:
        """Wait up to `seconds` for the job to end; how long it took. A job still running is killed
        with everything it started (the test fails on it, and leaves nothing behind)."""
        began = time.time()
        self.wait_until(lambda: False, seconds)
        if self.process.poll() is None:
            self.kill()
        return time.time() - began

    def kill(self) -> None:
        self.process.send_signal(signal.SIGSTOP)
        self.watch()
        for pid in [*self.seen, self.process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=60)

    def survivors(self) -> list[str]:
        """Command lines of the processes the job started that are alive EXIT_TO_CLEAN_S after it ended."""
        deadline = time.time() + EXIT_TO_CLEAN_S
        while any(map(alive, self.seen)) and time.time() < deadline:
            time.sleep(0.1)
        left = []
        for pid in filter(alive, self.seen):
            try:
                left.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
            except OSError:
                pass
            os.kill(pid, signal.SIGKILL)  # not to leave them to the rest of the suite
        return left

    def output(self) -> str:
        return self.log.read_text()


def _below(pid: int) -> set[int]:
    """descendants(pid), listed again where a process or thread ended while it was being listed."""
    for _ in range(20):
        try:
            return descendants(pid)
        except OSError:
            time.sleep(0.01)
    return set()


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def assert_one_line_naming(output: str, *phrases: str) -> str:
    """The job's output holds one error line, holding `phrases`, and no rank's traceback (torchrun
    adds a report of its own on the failed ranks, and its own traceback)."""
    errors = [line for line in output.splitlines() if line.startswith("megallm: error:")]
    assert len(errors) == 1, output[-4000:]
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    rank_lines = [line for line in output.splitlines()
                  if re.match(r"\[rank\d+\]:", line) or re.search(r'File ".*/megallm/', line)]
    assert not rank_lines, output[-4000:]
    return errors[0]


def test_an_exception_in_every_rank_ends_the_job_in_one_line(small_corpus, tmp_path):
    """optim.lr=3e38: `RuntimeError: value cannot be converted to type float without overflow`
    inside Adam, in step 1 of both ranks, after their loader workers started."""
    with Job([*SCHEDULE, "optim.lr=3e38", "train.steps=4", f"data.path={small_corpus}",
              f"run_dir={tmp_path / 'run'}"], tmp_path / "job.log") as job:
        loading = job.wait_until(lambda: all(job.loader_workers().get(rank) for rank in (0, 1)), START_S)
        took = job.end(FAULT_TO_EXIT_S if loading else START_S)
    assert job.process.returncode not in (0, None), job.output()[-4000:]
    assert took < FAULT_TO_EXIT_S, f"ended {took:.0f} s after the loader started: {job.output()[-4000:]}"
    assert not job.survivors()
    assert_one_line_naming(job.output(), "RuntimeError: value cannot be converted to type float without overflow")


def test_a_killed_loader_worker_of_one_rank_ends_the_job_in_one_line(small_corpus, tmp_path):
    """SIGKILL of rank 1's loader worker mid-run: rank 1 fails alone (rank 0 waits for it in a
    collective) and says so; torchrun ends rank 0."""
    run_dir = tmp_path / "run"
    with Job([*SCHEDULE, "optim.lr=3e-3", "train.steps=1000", f"data.path={small_corpus}", f"run_dir={run_dir}"],
             tmp_path / "job.log") as job:
        assert job.wait_until(lambda: 2 in logged_steps(run_dir), START_S), job.output()[-4000:]
        workers = job.loader_workers()
        assert len(workers.get(1, [])) == 1, workers
        os.kill(workers[1][0], signal.SIGKILL)
        took = job.end(FAULT_TO_EXIT_S)
    assert job.process.returncode not in (0, None), job.output()[-4000:]
    assert took < FAULT_TO_EXIT_S, f"ended {took:.0f} s after the kill: {job.output()[-4000:]}"
    assert not job.survivors()
    line = assert_one_line_naming(job.output(), "megallm: error: [rank 1] RuntimeError: DataLoader worker (pid")
    # DataLoader's SIGCHLD handler says "(pid N) is killed by signal: Killed."; its wait for a batch
    # "(pid(s) N) exited unexpectedly"
    assert re.search(rf"\(pid(\(s\))? {workers[1][0]}\) (is killed by signal|exited unexpectedly)", line), line
    assert max(logged_steps(run_dir)) < 1000
