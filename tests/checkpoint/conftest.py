"""Fixtures of the checkpoint tests: small filesystems to fill up or to find read-only."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(bytes, read_only=False): a fresh tmpfs of that size (skips where mounting needs a root
    we lack); unmounted after the test."""
    mounted = []

    def mount(size: int, read_only: bool = False) -> Path:
        where = tmp_path / f"small{len(mounted)}"
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a small tmpfs here (needs root)")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)
