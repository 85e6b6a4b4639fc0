"""Run a function on N local processes joined in one gloo process group (tools and tests).

Conversion tools need the processes of a checkpoint's layout (DeepSpeed loads a sharded
checkpoint only into the layout that wrote it) but are started as one plain `python`
command; tests start small worlds the same way. `run_local_world` starts the ranks on
this machine's CPU, sets the variables torchrun would set, and returns each rank's
return value, or turns a failure on any rank into one `WorldError` in the caller: the
first failing rank's one-line message (a MegallmError raised there) or the last line of
its traceback.

Ranks are forked from a server process that has imported torch, megatron-core and
DeepSpeed once (multiprocessing's "forkserver" with those modules preloaded), so a
world costs those imports once per calling process instead of once per rank. The
server starts with CUDA hidden and DeepSpeed pointed at the CPU: these ranks use gloo.
The server dies with the calling process (megallm.parallel.fork_server) and each rank with
the server, so a tool stopped by any signal leaves no process behind.

The ranks' stdout and stderr are written to `<logs>/rank_RRRRR.out` and `.err` when
`logs` is given, else discarded (MEGALLM_DEBUG=1 keeps them on the console). A crash is
reported by the last line of its traceback, or whole with MEGALLM_DEBUG=1.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import tempfile
import time
import traceback
from multiprocessing import forkserver
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch.multiprocessing as mp

from megallm.errors import MegallmError, WorldError
from megallm.parallel.distributed import free_port, shutdown
from megallm.parallel.lifetime import LAUNCHER_VARIABLES, die_with_parent

# The heavy imports every rank makes anyway, paid once in the fork server (megallm first: it
# silences megatron-core's warning about Transformer Engine; its fork_server module ties the
# server's life to its caller's before the slow imports).
PRELOAD = ["megallm.parallel.fork_server", "torch", "megatron.core", "deepspeed"]
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}


def _debug() -> bool:
    return bool(os.environ.get("MEGALLM_DEBUG"))


def _redirect_output(logs: Optional[str], rank: int) -> None:
    if _debug() and not logs:
        return
    for fd, suffix in ((1, "out"), (2, "err")):
        target = os.path.join(logs, f"rank_{rank:05d}.{suffix}") if logs else os.devnull
        handle = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)


def _rank_main(rank: int, world_size: int, port: int, workdir: str, logs: Optional[str], fn: Callable,
               args: tuple) -> None:
    die_with_parent(signal.SIGKILL)  # the fork server, which dies with the caller
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **CPU_ONLY)
    _redirect_output(logs, rank)
    try:
        result = fn(*args)
        Path(workdir, f"result_{rank:05d}.pkl").write_bytes(pickle.dumps(result))
    except MegallmError as exc:  # a user-fixable problem: its message is the report
        Path(workdir, f"0_rank_{rank:05d}").write_text(f"{exc}")
        raise SystemExit(2) from None
    except BaseException:  # a crash, or the echo of another rank's failure
        report = traceback.format_exc().strip()
        if not _debug():
            report = report.splitlines()[-1]
        Path(workdir, f"1_rank_{rank:05d}").write_text(f"rank {rank}: {report}")
        raise SystemExit(3) from None
    finally:
        shutdown()


@contextlib.contextmanager
def _cpu_only_environment() -> Iterator[None]:
    """This process's environment without launcher variables and with CUDA hidden, meanwhile."""
    saved = {k: os.environ.get(k) for k in (*LAUNCHER_VARIABLES, *CPU_ONLY)}
    for key in LAUNCHER_VARIABLES:
        os.environ.pop(key, None)
    os.environ.update(CPU_ONLY)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _start_fork_server() -> None:
    """Start the fork server once per process, in the environment every rank should inherit."""
    multiprocessing.set_forkserver_preload(PRELOAD)
    with _cpu_only_environment():
        forkserver.ensure_running()


def run_local_world(world_size: int, fn: Callable[..., Any], *args: Any, logs: Optional[Path] = None,
                    timeout: Optional[float] = None) -> list[Any]:
    """Call `fn(*args)` on `world_size` CPU ranks and return their return values in rank order.
    `fn` (a module-level function) starts its process group with megallm.parallel.distributed.
    Raises WorldError if any rank fails, or if the world runs longer than `timeout` seconds
    (its ranks are then killed)."""
    _start_fork_server()
    deadline = None if timeout is None else time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="megallm-world-") as workdir:
        context = mp.start_processes(_rank_main, args=(world_size, free_port(), workdir, str(logs) if logs else None,
                                                       fn, args),
                                     nprocs=world_size, join=False, start_method="forkserver")
        try:
            while not context.join(timeout=1.0):
                if deadline is not None and time.monotonic() > deadline:
                    for process in context.processes:
                        process.kill()
                    raise WorldError(f"the {world_size} rank(s) ran longer than {timeout:.0f} s and were stopped")
        except mp.ProcessExitedException as exc:
            reports = sorted(p for p in Path(workdir).iterdir() if not p.name.startswith("result_"))
            message = reports[0].read_text() if reports else f"rank {exc.error_index} exited with {exc.exit_code}"
            raise WorldError(message) from None
        return [pickle.loads(Path(workdir, f"result_{rank:05d}.pkl").read_bytes()) for rank in range(world_size)]
