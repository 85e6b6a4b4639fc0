"""DeepSpeed's communication starts without JIT-building its CPU shared-memory op.

That op was built with ninja into TORCH_EXTENSIONS_DIR (~/.cache/torch_extensions, shared by
every virtual environment): each venv rebuilt it (minutes on a loaded machine), and a build
killed midway left a `lock` file on which every later start waited for ever. The folder here
holds such a lock, as a killed build leaves it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import run_ranks

pytestmark = pytest.mark.slow


def _start_world(extensions: str) -> list[str]:
    from megallm.parallel.distributed import distributed

    os.environ["TORCH_EXTENSIONS_DIR"] = extensions  # read when an op is built, not at import
    with distributed():  # with DeepSpeed's communication, as a training run starts it
        pass
    return sorted(str(p.relative_to(extensions)) for p in Path(extensions).rglob("*"))


def test_a_stale_extension_lock_neither_stops_nor_rebuilds(tmp_path):
    op_folder = tmp_path / "deepspeed_shm_comm"
    op_folder.mkdir()
    (op_folder / "lock").touch()  # its builder was killed: nobody will remove it
    listing = run_ranks(1, _start_world, str(tmp_path), timeout=180)[0]  # it waited for ever on the lock
    assert listing == ["deepspeed_shm_comm", "deepspeed_shm_comm/lock"]  # and nothing was built
