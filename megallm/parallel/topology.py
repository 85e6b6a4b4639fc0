"""One rank layout seen by both libraries: megatron-core's groups and DeepSpeed's topology.

megatron-core's `parallel_state` owns the tensor-, data- and pipeline-parallel process
groups; ranks are numbered tensor-parallel fastest, then data-parallel, then pipeline.
DeepSpeed's `PipeModelDataParallelTopology` (axes pipe, data, model) numbers them the
same way. `check_topology_agreement` asserts that on every rank, and `MegatronMpu` hands
DeepSpeed the megatron-core groups in the `mpu` interface it expects, so that its
gradient all-reduce and ZeRO partitioning run over the data-parallel group only.
"""

from __future__ import annotations

import torch.distributed as dist
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from megatron.core import parallel_state as ps

from megallm.parallel.dims import ParallelDims


class MegatronMpu:
    """DeepSpeed's `mpu` interface over megatron-core `parallel_state`.

    DeepSpeed calls "model parallel" what megatron calls tensor parallel (the non-pipeline
    engine never sees pipeline stages), and asks for both spellings.
    """

    get_model_parallel_rank = get_tensor_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_model_parallel_world_size = get_tensor_model_parallel_world_size = staticmethod(
        ps.get_tensor_model_parallel_world_size)
    get_model_parallel_group = get_tensor_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_tensor_model_parallel_src_rank = staticmethod(ps.get_tensor_model_parallel_src_rank)
    get_data_parallel_rank = staticmethod(ps.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(ps.get_data_parallel_world_size)
    get_data_parallel_group = staticmethod(ps.get_data_parallel_group)
    get_pipeline_model_parallel_rank = staticmethod(ps.get_pipeline_model_parallel_rank)
    get_pipeline_model_parallel_world_size = staticmethod(ps.get_pipeline_model_parallel_world_size)
    get_pipeline_model_parallel_group = staticmethod(ps.get_pipeline_model_parallel_group)


def deepspeed_topology(dims: ParallelDims) -> PipeModelDataParallelTopology:
    return PipeModelDataParallelTopology(num_pp=dims.pp, num_mp=dims.tp, num_dp=dims.dp)


def megatron_group_ranks() -> dict[str, list[int]]:
    """This rank's tensor-, data- and pipeline-parallel groups as megatron-core built them."""
    groups = {"model": ps.get_tensor_model_parallel_group(), "data": ps.get_data_parallel_group(),
              "pipe": ps.get_pipeline_model_parallel_group()}
    return {axis: sorted(dist.get_process_group_ranks(group)) for axis, group in groups.items()}


def deepspeed_group_ranks(topology, rank: int) -> dict[str, list[int]]:
    """The ranks DeepSpeed's topology puts in the same group as `rank`, per axis."""
    out = {}
    for axis in ("model", "data", "pipe"):
        for ranks in topology.get_axis_comm_lists(axis) or [[r] for r in range(topology.world_size())]:
            if rank in ranks:
                out[axis] = sorted(ranks)
    return out


def check_topology_agreement(topology, rank: int) -> None:
    """Raise if megatron-core and DeepSpeed disagree about this rank's groups."""
    ours, theirs = megatron_group_ranks(), deepspeed_group_ranks(topology, rank)
    if ours != theirs:
        raise RuntimeError(f"rank {rank}: megatron-core groups {ours} differ from DeepSpeed's topology {theirs}")
    coord = topology.get_coord(rank)
    expected = (ps.get_pipeline_model_parallel_rank(), ps.get_data_parallel_rank(),
                ps.get_tensor_model_parallel_rank())
    if (coord.pipe, coord.data, coord.model) != expected:
        raise RuntimeError(f"rank {rank}: DeepSpeed coordinate {coord} differs from megatron-core's "
                           f"(pipe, data, model) = {expected}")
