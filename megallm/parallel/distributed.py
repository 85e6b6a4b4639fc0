"""Process-group start-up: torch.distributed, megatron-core parallel_state, DeepSpeed.

Backend nccl when CUDA is present, gloo otherwise. A plain `python launch/pretrain.py`
(no torchrun) runs as a world of one. Nothing here reads global config: the layout is
passed in and the resulting groups are described by the returned `DistContext`.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import os
import socket
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from megatron.core import parallel_state

from megallm.parallel.dims import ParallelDims, RankCoordinates


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str
    device: torch.device
    dims: ParallelDims

    @property
    def coords(self) -> RankCoordinates:
        """This rank's tensor-, data- and pipeline-parallel ranks."""
        return self.dims.coordinates(self.rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def select_deepspeed_accelerator() -> None:
    """DeepSpeed picks its accelerator when first imported: point it at the CPU when there is no CUDA
    (else it guesses so itself, with a warning)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def init_distributed(tp: int = 1, pp: int = 1, zero_stage: int = 0, timeout_minutes: int = 30,
                     deepspeed: bool = True) -> DistContext:
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
    dims = ParallelDims.for_world(world, tp, pp, zero_stage)

    if torch.cuda.is_available():
        backend, device = "nccl", torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        backend, device = "gloo", torch.device("cpu")
        # Share the cores among the processes on this machine instead of oversubscribing.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // local_world))

    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=timeout_minutes)
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp
        )
    megatron = RankCoordinates(tp=parallel_state.get_tensor_model_parallel_rank(),
                               dp=parallel_state.get_data_parallel_rank(),
                               pp=parallel_state.get_pipeline_model_parallel_rank())
    if megatron != dims.coordinates(rank):
        raise RuntimeError(f"rank {rank}: megatron-core's coordinates {megatron} differ from {dims}'s "
                           f"{dims.coordinates(rank)}")
    if deepspeed:
        import deepspeed as ds  # deferred: after select_deepspeed_accelerator (DeepSpeed reads it at import)

        _skip_shared_memory_op()
        ds.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
                       backend=backend, device=device, dims=dims)


def _skip_shared_memory_op() -> None:
    """Start DeepSpeed's communication without its CPU shared-memory op. On the CPU accelerator,
    DeepSpeed JIT-builds `deepspeed_shm_comm` (C++, with ninja) into TORCH_EXTENSIONS_DIR,
    by default ~/.cache/torch_extensions, shared by every virtual environment: each one
    rebuilds it (minutes), and a build killed midway leaves a `lock` file on which every later
    start waits for ever. The op serves only `inference_all_reduce` (DeepSpeed-Inference's
    tensor parallelism), which megallm never calls; without it DeepSpeed uses
    torch.distributed's all_reduce there. deepspeed.comm.torch builds it in `build_shm_op`."""
    # deferred: DeepSpeed is imported by the caller, after the accelerator. By name: `import
    # deepspeed.comm.torch as ...` would give the torch that deepspeed.comm imported.
    backend_module: Any = importlib.import_module("deepspeed.comm.torch")  # untyped: its attributes are unknown
    backend_module.build_shm_op = lambda: None


def agree(problem: Optional[str]) -> Optional[str]:
    """Collective: the first rank's problem (one line, or None), on every rank; so that all
    raise together where one rank found something wrong (no rank is left waiting)."""
    problems: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(problems, problem)
    return next((p for p in problems if p), None)


def shutdown() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def distributed(tp: int = 1, pp: int = 1, zero_stage: int = 0, deepspeed: bool = True) -> Iterator[DistContext]:
    """`init_distributed` for the block. On exit it shuts down what it started; a process group
    that was up before (an enclosing world of one, as in tests) stays up."""
    was_up = torch.distributed.is_initialized()
    try:
        yield init_distributed(tp, pp, zero_stage, deepspeed=deepspeed)
    finally:
        if not was_up:
            shutdown()
