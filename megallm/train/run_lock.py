"""One run per run folder: a lock that a second run in the same `run_dir` is refused by.

Two runs writing one folder would mix their checkpoints, config.yaml and metrics.jsonl.
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
import socket
import time
from pathlib import Path
from typing import Optional

from megallm.errors import ConfigError
from megallm.train.callbacks.base import Callback

LOCK_FILE = ".megallm.lock"


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
    training loop) or the process ends."""

    def __init__(self, root: Path):
        self.path = Path(root) / LOCK_FILE
        self._fd: Optional[int] = None
        self.took_over: Optional[dict] = None  # the holder of a stale lock this run replaced

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict) -> ConfigError:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("started", 0)))
        return ConfigError(f"run_dir {self.path.parent} is in use by another run (pid {holder.get('pid', '?')} on "
                           f"{holder.get('host', '?')}, started {since}); wait for it to end or set another run_dir")

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        self._fd = fd
        return self

    def on_fit_end(self, trainer) -> None:
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None
