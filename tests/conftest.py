"""Shared fixtures: a world of one process for in-process model tests, small corpora, and small
filesystems (full or read-only disks).

Tests that start training runs, worlds of ranks or tool processes are marked `slow`
(`bash tests/run.sh -m "not slow"` runs the quick half). Helpers live in tests/helpers.py.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import short_stdlib_modules, stdlib_subset

# torch.compile's cache is shared by every process of a user (/tmp/torchinductor_<user>): an entry left
# by a run killed mid-write, or by several suites at once, crashed a compiled test (free(): invalid
# pointer). Each session compiles into a cache of its own, as a fresh CI machine does; the ranks and
# tools the tests start inherit it.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="megallm-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)


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


@pytest.fixture(scope="session")
def short_documents(tmp_path_factory) -> Path:
    """The standard library's short modules, a 512-token vocabulary: most training windows span
    an end of document, so document masking is at work."""
    from megallm.data.prepare import prepare

    out = tmp_path_factory.mktemp("short_documents")
    prepare(short_stdlib_modules(), out, vocab_size=512, tokenizer_path=None, val_fraction=0.05,
            shard_tokens=50_000, tokenizer_train_bytes=1 << 20, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def mixture_sources(tmp_path_factory) -> dict[str, Path]:
    """Three corpora of one tokenizer and one of another (tests/mixture_inputs.py)."""
    from tests.mixture_inputs import prepare_sources

    return prepare_sources(tmp_path_factory.mktemp("mixture"))


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(bytes, read_only=False): a fresh filesystem of that size (a full or read-only disk,
    for real); skips where mounting needs a root we lack. Unmounted after the test."""
    mounted = []

    def mount(size: int, read_only: bool = False) -> Path:
        where = tmp_path / f"small{len(mounted)}"
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode:
            pytest.skip("cannot mount a small tmpfs here (needs root)")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)
