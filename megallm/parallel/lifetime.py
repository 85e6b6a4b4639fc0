"""Process lifetime: ranks and loader workers that die with the process that started them.

torchrun starts each rank in a session of its own, so signalling or killing torchrun's
process group does not reach them, and a torchrun killed outright (SIGKILL, or a signal
it does not handle such as SIGUSR1) leaves its ranks training with no supervisor. On
Linux `die_with_parent` asks the kernel (prctl PR_SET_PDEATHSIG) to send a signal to this
process when its parent exits: ranks take SIGTERM (they checkpoint and stop,
megallm.train.callbacks.preemption), loader workers SIGKILL (they hold nothing to save).
A rank whose torchrun died before the request took effect finds itself `orphaned_by_launcher`
and stops at once, instead of waiting in init_process_group for a rendezvous that is gone.

A rank that fails ends at once, and one rank of the job says why (`reports_failure`): rank 0
when it failed, else the first rank that did. The others are echoes (a collective whose peer
is gone) or the same failure again (every rank overflowed in one step); torchrun ends the
ranks still waiting once the failed ones have exited.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STORE_TIMEOUT_S = 5  # a failing rank's wait for the launcher's store to answer
# What a launcher (torchrun, megallm.parallel.local_world) gives each rank: a process that starts a world
# of its own passes its children an environment without them.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Have `sig` sent to this process when its parent exits; False where the platform cannot."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the parent exited before the request took effect
        os.kill(os.getpid(), sig)
    return True


def orphaned_by_launcher() -> bool:
    """True when the process that started this one (a torchrun, which loads libtorch) is gone and
    this one was handed to a reaper: a torchrun killed in the instant between starting a rank and
    the rank's `die_with_parent`. The parent's memory map tells (libtorch in it or not); where it
    cannot be read (init's often cannot), its command line (torchrun or torch.distributed.run)."""
    parent = Path(f"/proc/{os.getppid()}")
    try:
        return "libtorch" not in (parent / "maps").read_text()
    except OSError:
        pass
    try:
        return b"torch" not in (parent / "cmdline").read_bytes()
    except OSError:
        return False  # nothing to go by: carry on


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def reports_failure(rank: int, world_size: int, wait_s: float) -> bool:
    """Whether this failing rank is the one to say why the job failed: rank 0 at once, another rank
    when no rank has claimed it within `wait_s` (it failed alone: rank 0 waits for it in a
    collective). Claimed in the launcher's key-value store (MASTER_ADDR:MASTER_PORT; torchrun's
    outlives the ranks), which allows one claim per job attempt; where the store cannot be
    reached, rank 0 alone reports."""
    if world_size == 1:
        return True
    try:
        # deferred: torch, only for a failing rank of a world (this module is imported before torch)
        import torch.distributed as dist

        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=datetime.timedelta(seconds=STORE_TIMEOUT_S))
        # one key per rendezvous and restart: a store may outlive a job (one that held MASTER_PORT before it)
        attempt = f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        key = f"megallm/failure_reporter/{attempt}"
        if rank != 0:
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if store.check([key]):
                    return False
                time.sleep(0.1)
        return store.compare_set(key, "", str(rank)) == str(rank).encode()
    except Exception:  # no launcher's store (gone, or none): nothing to agree through
        return rank == 0
