"""Process lifetime: ranks and loader workers that die with the process that started them.

torchrun starts each rank in a session of its own, so signalling or killing torchrun's
process group does not reach them, and a torchrun killed outright (SIGKILL, or a signal
it does not handle such as SIGUSR1) leaves its ranks training with no supervisor. On
Linux `die_with_parent` asks the kernel (prctl PR_SET_PDEATHSIG) to send a signal to this
process when its parent exits: ranks take SIGTERM (they checkpoint and stop,
megallm.train.callbacks.preemption), loader workers SIGKILL (they hold nothing to save).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


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


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ
