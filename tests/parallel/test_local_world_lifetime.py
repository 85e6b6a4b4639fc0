"""A tool that runs a local world of ranks (megallm.parallel.local_world) takes them along when it
is stopped: `tools/convert_ckpt.py export` of a 2-rank checkpoint, sent SIGTERM while its fork
server starts, leaves no process behind within seconds.

Before, the fork server went on importing torch, megatron-core and DeepSpeed, then forked the
rank the dead tool had asked for, which waited in its rendezvous for minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, SMALL_MODEL, alive, clean_environment, descendants, train

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")]

GONE_WITHIN_S = 10  # after the tool's exit; a parent-death signal takes milliseconds


def _fork_server(pids: set[int]) -> bool:
    for pid in pids:
        try:
            if b"multiprocessing.forkserver" in open(f"/proc/{pid}/cmdline", "rb").read():
                return True
        except OSError:
            pass
    return False


def test_sigterm_to_an_export_leaves_no_process(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    result = train([*SMALL_MODEL, "model.num_layers=1", "train.seq_len=32", "train.micro_batch_size=2",
                    "train.global_batch_tokens=128", "train.steps=1", "train.eval_every=0", "data.num_workers=0",
                    f"data.path={small_corpus}", f"run_dir={run_dir}"], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = run_dir / "checkpoints" / "step_00000001"
    tool = subprocess.Popen([sys.executable, str(REPO / "tools" / "convert_ckpt.py"), "export", str(checkpoint),
                             str(tmp_path / "hf")], cwd=REPO, env=clean_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not _fork_server(descendants(tool.pid)):
        assert tool.poll() is None and time.time() < deadline, tool.communicate()[0][-3000:]
        time.sleep(0.02)
    time.sleep(0.5)  # its first rank asked for
    seen = descendants(tool.pid)
    tool.send_signal(signal.SIGTERM)
    assert tool.wait(timeout=60) == -signal.SIGTERM
    deadline = time.time() + GONE_WITHIN_S
    while any(map(alive, seen)) and time.time() < deadline:
        for pid in list(seen):
            seen |= descendants(pid)  # what the fork server starts after the tool is gone
        time.sleep(0.1)
    left = [pid for pid in seen if alive(pid)]
    for pid in left:  # not to leave them to the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} of the export's {len(seen)} processes outlived it by {GONE_WITHIN_S} s"
