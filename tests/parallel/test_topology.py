"""megatron-core's process groups and DeepSpeed's pipeline topology agree on every rank.

Four real gloo processes build megatron-core `parallel_state` for several layouts of a
world of 4 and compare each rank's tensor-, data- and pipeline-parallel groups with
DeepSpeed's `PipeModelDataParallelTopology`, with `ParallelDims`' coordinates, and the
`MegatronMpu` adapter with all of them. A topology with the axes in another order must be
caught.
"""

from __future__ import annotations

import pytest
import torch.distributed as dist
from deepspeed.runtime.pipe.topology import ProcessTopology
from megatron.core import parallel_state as ps

from megallm.parallel.dims import ParallelDims
from megallm.parallel.topology import (
    MegatronMpu,
    check_topology_agreement,
    deepspeed_group_ranks,
    deepspeed_topology,
    megatron_group_ranks,
)
from tests.helpers import run_ranks

WORLD = 4
LAYOUTS = [(2, 2), (4, 1), (1, 4), (2, 1), (1, 2), (1, 1)]  # (tp, pp); dp = 4 / (tp * pp)


def _worker() -> list[str]:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    lines = []
    for tp, pp in LAYOUTS:
        dims = ParallelDims.for_world(WORLD, tp, pp)
        dp = dims.dp
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        topology = deepspeed_topology(dims)
        check_topology_agreement(topology, rank)
        coords = dims.coordinates(rank)  # megallm's own arithmetic, as megatron-core numbers the ranks
        assert coords == (ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank(),
                          ps.get_pipeline_model_parallel_rank())
        assert dims.rank(*coords) == rank
        mpu = MegatronMpu()
        assert mpu.get_model_parallel_world_size() == tp and mpu.get_data_parallel_world_size() == dp
        assert mpu.get_model_parallel_rank() == topology.get_coord(rank).model
        assert mpu.get_data_parallel_rank() == topology.get_coord(rank).data
        lines.append(f"{tp} {pp} {megatron_group_ranks()}")
        # The same sizes with the axes in another order put other ranks together: it must be caught.
        if tp > 1 and dp > 1:
            swapped = ProcessTopology(axes=["pipe", "model", "data"], dims=[pp, tp, dp])
            assert deepspeed_group_ranks(swapped, rank) != megatron_group_ranks()
            with pytest.raises(RuntimeError, match="differ"):
                check_topology_agreement(swapped, rank)
        ps.destroy_model_parallel()
    dist.destroy_process_group()
    return lines


@pytest.mark.slow
def test_megatron_and_deepspeed_agree_on_every_rank():
    groups = dict(enumerate(run_ranks(WORLD, _worker)))
    # Spot-check megatron's order (TP fastest, then DP, then PP) for TP=2 x PP=2 on rank 1.
    assert groups[1][0] == "2 2 {'model': [0, 1], 'data': [1], 'pipe': [1, 3]}"
    # and for TP=2 x DP=2 on rank 2.
    assert groups[2][3] == "2 1 {'model': [2, 3], 'data': [0, 2], 'pipe': [2]}"
