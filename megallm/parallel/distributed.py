"""Process-group start-up: torch.distributed, megatron-core parallel_state, DeepSpeed.

Backend nccl when CUDA is present, gloo otherwise. A plain `python launch/pretrain.py`
(no torchrun) runs as a world of one. Nothing here reads global config: the layout is
passed in and the resulting groups are returned in a `DistContext`.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str
    device: torch.device
    tp: int
    pp: int
    dp: int
    dp_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def select_deepspeed_accelerator() -> None:
    """DeepSpeed picks its accelerator at import: point it at the CPU when there is no CUDA."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def init_distributed(tp: int = 1, pp: int = 1, timeout_minutes: int = 30, deepspeed: bool = True) -> DistContext:
    """Start (or join) the process group and build megatron-core's TP/DP/PP groups.

    deepspeed=False skips DeepSpeed's communication set-up (for work that builds no engine).
    """
    select_deepspeed_accelerator()
    if "RANK" not in os.environ:  # single process without a launcher
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if world % (tp * pp):
        raise ValueError(f"world size {world} is not divisible by tp={tp} x pp={pp}")

    if torch.cuda.is_available():
        backend, device = "nccl", torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        backend, device = "gloo", torch.device("cpu")
        # Share the cores among the processes on this machine instead of oversubscribing.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, cores // local_world))

    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=timeout_minutes)
        )
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp
        )
    if deepspeed:
        import deepspeed as ds

        ds.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return DistContext(
        rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
        backend=backend, device=device, tp=tp, pp=pp, dp=world // (tp * pp),
        dp_rank=parallel_state.get_data_parallel_rank(),
    )


def shutdown() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
