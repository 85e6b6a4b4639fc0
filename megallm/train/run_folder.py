"""Whether a run can write its run folder (`run_dir`, and `checkpoint.dir`): the folder's map is
megallm.run_layout's, this adds the checks and the first write.

`RunFolder.checked` is asked before any process group starts: an empty `run_dir` (it would
write into the current directory), a path that is a file or lies under one, a read-only or
full filesystem are each one line then, not a traceback inside the ranks.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megallm.config import ConfigError, RunConfig
from megallm.files import nearest_existing, read_only_filesystem
from megallm.run_layout import RunPaths

# Less free space than this counts as a full filesystem: the run's config and first metrics records
# would not fit (the checkpoints' own space is checked before each save, megallm.checkpoint.saving).
MIN_FREE_BYTES = 1 << 20


@dataclass(frozen=True)
class RunFolder(RunPaths):
    """The run folder of a config (its file names: megallm.run_layout), and the writes into it at start-up."""

    @classmethod
    def of(cls, cfg: RunConfig) -> RunFolder:
        paths = RunPaths.of_settings(cfg.run_dir, cfg.checkpoint.dir)
        return cls(paths.root, paths.checkpoints)

    @classmethod
    def checked(cls, cfg: RunConfig) -> RunFolder:
        """The run's folders, once each is known to be creatable and writable; ConfigError otherwise."""
        if not cfg.run_dir.strip():
            raise ConfigError("run_dir is empty, which would write the run into the current directory; name its "
                              "folder, e.g. run_dir=runs/NAME (run_dir=. if the current directory is meant)")
        folder = cls.of(cfg)
        problem = unwritable("run_dir", folder.root) or unwritable("checkpoint.dir", folder.checkpoints)
        if problem:
            raise ConfigError(problem)
        return folder

    def write_config(self, config_yaml: str) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.config.write_text(config_yaml)
        except OSError as error:
            raise ConfigError(write_failure("run_dir", self.root, error)) from None


def unwritable(key: str, folder: Path) -> Optional[str]:
    """Why the folder `folder` (config key `key`) cannot be created and written, or None: it exists and
    is not a folder, it lies under a file, its filesystem is read-only or full, or this user may not write."""
    existing = nearest_existing(folder)
    if not existing.is_dir():
        where = "exists and is not a folder" if existing == folder else f"lies under {existing}, which is not a folder"
        return f"{key}={folder} {where}; choose a folder (it is created if missing)"
    cannot = f"{key}={folder} cannot be written" if existing == folder else \
        f"{key}={folder} cannot be created in {existing}"
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only filesystem" if read_only_filesystem(existing) else "no write permission"
        return f"{cannot} ({why}); choose a folder this user can write"
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        return f"{cannot}: its filesystem is full ({free:,} bytes free); free some space or choose a folder elsewhere"
    return None


def write_failure(key: str, folder: Path, error: OSError) -> str:
    """One line for a write into the run's folder `folder` that failed at start-up (the checks of
    `unwritable` passed, and then the filesystem filled up or refused)."""
    fix = "free some space or choose a folder elsewhere" if error.errno in (errno.ENOSPC, errno.EDQUOT) else \
        "choose a folder this user can write"
    return f"{key}={folder} cannot be written: {error.strerror or error} ({error.filename or folder}); {fix}"
