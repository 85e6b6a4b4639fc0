"""One run per run folder: a lock that a second run in the same `run_dir` is refused by.

Two runs writing one folder would mix their checkpoints, config.yaml and metrics.jsonl; a
checkpoint.dir outside the run folder is locked the same way (megallm.train.build), or a
second run with its own run_dir would save into the first's checkpoints.
Rank 0 holds an exclusive `flock` on `<run_dir>/.megallm.lock` for the whole run; the
kernel releases it when the process ends, however it ends, so the lock of a dead run is
taken over without anyone deleting it. The file names the holder (host, pid, start time)
for the message a second run gets. Where the filesystem has no flock (some network
filesystems), the recorded pid decides: a lock of a process that no longer runs on this
host is stale and taken over.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

from megallm.errors import ConfigError
from megallm.files import nearest_existing
from megallm.run_layout import lock_file
from megallm.train.callbacks.base import Callback
from megallm.train.run_folder import write_failure


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock(Callback):
    """The lock of the run folder `root`, held from `acquire` until `release` (at the end of the
    training loop) or the process ends. `setting`: the config key that names the folder (a
    checkpoint.dir outside the run folder is locked the same way), for the message."""

    def __init__(self, root: Path, setting: str = "run_dir"):
        self.path = lock_file(root)
        self.setting = setting
        self._fd: Optional[int] = None
        self._created: Optional[Path] = None  # the outermost folder acquire created (None: the folder existed)
        self._created_file = False  # acquire created the lock file
        self.took_over: Optional[dict] = None  # the holder of a stale lock this run replaced

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict) -> ConfigError:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("started", 0)))
        return ConfigError(f"{self.setting} {self.path.parent} is in use by another run (pid {holder.get('pid', '?')} "
                           f"on {holder.get('host', '?')}, started {since}); wait for it to end or set another "
                           f"{self.setting}")

    def acquire(self) -> RunLock:
        """Take the lock, creating the folder if needed; ConfigError (one line) if another run holds it
        or the folder cannot be written."""
        folder = self.path.parent
        self._created = _first_missing(folder)
        self._created_file = not self.path.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            self._remove_created()
            raise ConfigError(write_failure(self.setting, folder, error)) from None
        holder = self._holder()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._refuse(holder) from None
        except OSError:  # no flock on this filesystem: the recorded pid decides
            if holder.get("host") == socket.gethostname() and _alive(holder.get("pid", 0)) \
                    and holder.get("pid") != os.getpid():
                os.close(fd)
                raise self._refuse(holder) from None
        if holder.get("pid") and holder.get("pid") != os.getpid():
            self.took_over = holder
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
        except OSError as error:  # e.g. a full filesystem
            self.abandon()
            raise ConfigError(write_failure(self.setting, folder, error)) from None
        return self

    def close(self, trainer) -> None:
        self.release()  # after the last step's save, or an exception: the next job may take the folder

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                os.close(self._fd)  # closing releases the flock
                self._fd = None

    def abandon(self) -> None:
        """Release, and remove what `acquire` created, for a run refused before its first step: the lock
        file, or the whole folder where `acquire` created it (all in it was written by this run, which
        held the lock) along with the parents it created."""
        try:
            self.release()
        except OSError:
            pass
        if self._created is None and self._created_file:
            self.path.unlink(missing_ok=True)
        self._remove_created()

    def _remove_created(self) -> None:
        if self._created is None:
            return
        shutil.rmtree(self.path.parent, ignore_errors=True)
        for parent in self.path.parent.parents:  # the parents acquire created, while nothing else is in them
            if not parent.is_relative_to(self._created):
                break
            try:
                parent.rmdir()
            except OSError:
                break


def _first_missing(folder: Path) -> Optional[Path]:
    """The outermost of `folder` and its parents that does not exist (what mkdir(parents=True) creates
    first), or None if `folder` exists."""
    existing = nearest_existing(folder)
    return None if existing == folder else existing / folder.relative_to(existing).parts[0]
