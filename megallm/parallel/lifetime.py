"""Process lifetime: ranks and loader workers that die with the process that started them.

torchrun starts each rank in a session of its own, so signalling or killing torchrun's
process group does not reach them, and a torchrun killed outright (SIGKILL, or a signal
it does not handle such as SIGUSR1) leaves its ranks training with no supervisor. On
Linux `die_with_parent` asks the kernel (prctl PR_SET_PDEATHSIG) to send a signal to this
process when its parent exits: ranks take SIGTERM (they checkpoint and stop,
megallm.train.callbacks.preemption), loader workers SIGKILL (they hold nothing to save).
A rank whose torchrun died before the request took effect finds itself `orphaned_by_launcher`
and stops at once, instead of waiting in init_process_group for a rendezvous that is gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
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
