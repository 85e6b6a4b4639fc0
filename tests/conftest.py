"""Shared fixtures: a world of one process for in-process model tests, and a small corpus."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# A few stdlib packages: enough text to train a 512-token BPE and a few hundred steps.
CORPUS_PACKAGES = ("json", "email", "http", "logging")


def stdlib_subset() -> list[Path]:
    from megallm.data.plan import python_stdlib_files

    return [p for p in python_stdlib_files() if any(f"/{pkg}/" in str(p) for pkg in CORPUS_PACKAGES)]


@pytest.fixture(scope="session")
def world_of_one():
    """torch.distributed + megatron-core parallel_state with one gloo rank (TP=PP=DP=1)."""
    from megallm.parallel.distributed import init_distributed, shutdown

    ctx = init_distributed(deepspeed=False)
    yield ctx
    shutdown()


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    from megallm.data.prepare import prepare

    out = tmp_path_factory.mktemp("corpus")
    prepare(stdlib_subset(), out, vocab_size=512, tokenizer_path=None, val_fraction=0.05,
            shard_tokens=50_000, tokenizer_train_bytes=1 << 20, log=lambda *_: None)
    return out


def run_pretrain(args: list[str], nproc: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run launch/pretrain.py as users do: plain python for one process, torchrun for several."""
    # Drop the rendezvous variables the in-process `world_of_one` fixture may have set.
    launcher_vars = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if nproc == 1:
        cmd = [sys.executable, str(REPO / "launch" / "pretrain.py"), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(REPO / "launch" / "pretrain.py"), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
