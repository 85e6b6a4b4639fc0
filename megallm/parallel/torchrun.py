"""`python -m megallm.parallel.torchrun [torchrun's arguments]`: torchrun for jobs that stop on a signal
and are requeued by their exit code (launch/slurm/pretrain.sbatch, the runs of launch/sweep.py).

torchrun itself ends on SIGTERM (and on SIGUSR1 where it handles it, which it does not by default: it
dies of it): it passes the signal to its ranks, kills them 30 s later, mid-checkpoint if the save takes
longer, and exits 1 whatever they did. When its ranks exit on their own, with megallm's 75 after a
stop signal (megallm.train.callbacks.preemption) or 2 for a config error, it exits 1 too, so a batch
script cannot tell a preempted run from a crash. Here torchrun runs in this process with two changes:

- SIGTERM and SIGUSR1 are passed on to the ranks (this process's children) and torchrun goes on
  waiting for them, as long as their checkpoint takes (the scheduler's kill deadline still holds).
  A stop signal before any rank has started has its default effect: nothing to save yet.
- The exit code is that of the rank that ended first (75: stopped with a checkpoint; a rank
  killed by signal S gives 128 + S, as a shell says), not torchrun's 1: when one rank exits,
  torchrun stops the others (SIGTERM), and a rank already past its checkpoint dies of it.

Everything else, its arguments and SIGINT included, is torchrun's.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# torchrun installs handlers for the signals these name when it starts the ranks (PET_: its
# --signals-to-handle argument; TORCHELASTIC_: older versions): all but the stop signals, left to this module.
HANDLED_BY_TORCHRUN = "SIGINT,SIGHUP,SIGQUIT"
SIGNAL_VARIABLES = ("PET_SIGNALS_TO_HANDLE", "TORCHELASTIC_SIGNALS_TO_HANDLE")


def main(argv: Optional[list[str]] = None) -> int:
    for variable in SIGNAL_VARIABLES:
        os.environ[variable] = HANDLED_BY_TORCHRUN
    for sig in STOP_SIGNALS:
        signal.signal(sig, _pass_on)
    # deferred: torch's import takes seconds, during which a stop signal must already be handled
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(sys.argv[1:] if argv is None else argv)
    except ChildFailedError as failed:
        first, _ = failed.get_first_failure()
        codes = {rank: _shell_code(failure.exitcode) for rank, failure in sorted(failed.failures.items())}
        listed = ", ".join(f"{rank}: {code}" + (" (first)" if rank == first else "") for rank, code in codes.items())
        print(f"torchrun: exit codes by rank: {listed}", file=sys.stderr, flush=True)
        return codes[first]
    return 0


def _shell_code(exitcode: int) -> int:
    """A process's exit code as a shell reports it: 128 + S for a process killed by signal S."""
    return exitcode if exitcode >= 0 else 128 - exitcode


def _pass_on(signum: int, _frame) -> None:
    ranks = children(os.getpid())
    if not ranks:  # still starting: nothing to save yet
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    for pid in ranks:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # exited meanwhile
            pass


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


if __name__ == "__main__":
    sys.exit(main())
