"""Run a function on N local processes joined in one gloo process group (tools, not training).

Conversion tools need the processes of a checkpoint's layout (DeepSpeed loads a sharded
checkpoint only into the layout that wrote it) but are started as one plain `python`
command. `run_local_world` spawns the ranks on this machine's CPU, sets the variables
torchrun would set, and turns a failure on any rank into one exception in the caller:
`WorldError` with the first failing rank's one-line message (a `ValueError` raised there,
such as CheckpointError or ConversionError) or the last line of its traceback. The ranks'
stdout and stderr are discarded; MEGALLM_DEBUG=1 keeps them and reports whole tracebacks.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class WorldError(RuntimeError):
    """A rank of a local world failed; the message is that rank's error."""


def _rank_main(rank: int, world_size: int, port: int, errors: str, fn: Callable, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    if not os.environ.get("MEGALLM_DEBUG"):  # the ranks' own chatter (DeepSpeed's banners); failures are reported
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    try:
        fn(*args)
    except ValueError as exc:  # a user-fixable problem: its message is the report
        Path(errors, f"0_rank_{rank:05d}").write_text(f"{exc}")
        raise SystemExit(2)
    except BaseException:  # a crash, or the echo of another rank's failure
        report = traceback.format_exc().strip()
        if not os.environ.get("MEGALLM_DEBUG"):  # MEGALLM_DEBUG=1: the whole traceback
            report = report.splitlines()[-1]
        Path(errors, f"1_rank_{rank:05d}").write_text(f"rank {rank}: {report}")
        raise SystemExit(3)
    finally:
        from megallm.parallel.distributed import shutdown

        shutdown()


def run_local_world(world_size: int, fn: Callable[..., Any], *args: Any) -> None:
    """Call `fn(*args)` on `world_size` spawned CPU ranks; `fn` starts its process group with
    megallm.parallel.distributed.init_distributed. Raises WorldError if any rank fails."""
    import torch.multiprocessing as mp

    from megallm.parallel.distributed import free_port

    with tempfile.TemporaryDirectory(prefix="megallm-world-") as errors:
        saved = {k: os.environ.pop(k) for k in LAUNCHER_VARIABLES if k in os.environ}
        try:
            mp.start_processes(_rank_main, args=(world_size, free_port(), errors, fn, args), nprocs=world_size,
                               join=True, start_method="spawn")
        except mp.ProcessExitedException as exc:
            reports = sorted(Path(errors).iterdir())
            message = reports[0].read_text() if reports else f"rank {exc.error_index} exited with {exc.exit_code}"
            raise WorldError(message) from None
        finally:
            os.environ.update(saved)
