"""Gather the model from any layout into one full copy with canonical (single-process) names.

Collective: every rank calls `gather_full_weights`. ZeRO-3 partitions are gathered over
the data-parallel group, tensor-parallel shards are concatenated along their split
dimension (de-interleaving strided splits such as the fused [gate; up] matrix), and the
pipeline stages send their layers to rank 0. Padded vocabulary rows are dropped, so the
result is the same for every layout. Only rank 0 gets the dict; it holds the whole
model in CPU memory.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megallm.model.config import ModelConfig

VOCAB_PARAMETERS = ("embedding.weight", "output.weight")


def gather_tensor_parallel(shard: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    """The full tensor of a TP-split parameter (collective over the TP group); others as they are."""
    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return shard
    dim, stride = param.partition_dim, getattr(param, "partition_stride", 1)
    pieces = [torch.empty_like(shard) for _ in range(tp)]
    dist.all_gather(pieces, shard.contiguous(), group=ps.get_tensor_model_parallel_group())
    # Rank r holds [part_0 of r, ..., part_(stride-1) of r]; the full tensor is part_0 of all ranks, then part_1 ...
    chunks = [piece.chunk(stride, dim=dim) for piece in pieces]
    return torch.cat([chunks[r][s] for s in range(stride) for r in range(tp)], dim=dim)


def _zero3_gather(param: torch.nn.Parameter):
    if hasattr(param, "ds_id"):  # partitioned by ZeRO-3
        import deepspeed

        return deepspeed.zero.GatheredParameters([param], modifier_rank=None)
    return nullcontext()


def gather_full_weights(engine, model_cfg: ModelConfig) -> Optional[dict[str, torch.Tensor]]:
    """{canonical name: full fp32/bf16 tensor on CPU} on rank 0, None elsewhere."""
    keep = ps.get_data_parallel_rank() == 0 and ps.get_tensor_model_parallel_rank() == 0
    local: dict[str, torch.Tensor] = {}
    for name, param in engine.canonical_parameters():  # same order on the ranks of a stage
        with _zero3_gather(param):
            full = gather_tensor_parallel(param.data, param)
            if keep:
                local[name] = full.detach().to("cpu", copy=True)
    for name in VOCAB_PARAMETERS:
        if name in local:
            local[name] = local[name][: model_cfg.vocab_size].clone()
    everyone = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(local, everyone, dst=0)
    if dist.get_rank() != 0:
        return None
    merged: dict[str, torch.Tensor] = {}
    for part in everyone:  # rank order: the first stage's copy of a tied weight wins
        for name, tensor in part.items():
            merged.setdefault(name, tensor)
    return dict(sorted(merged.items()))
