"""Every DeepSpeed detail megallm relies on that is not DeepSpeed's public API, in one place.

Checked against DeepSpeed 0.19 (ZeRO 0-3, bf16, the pipeline engine) on CPU over gloo;
a DeepSpeed upgrade that breaks megallm breaks here first (tests/checkpoint/test_convert.py
and tests/integration exercise each function).

- ZeRO-3 partitions a parameter at construction: `ds_id` marks it, `ds_shape` keeps the
  unpartitioned shape. ZeRO-1/2 and the bf16 optimizer keep fp32 masters as slices of
  flat partitions, linked to each parameter through `_hp_mapping`.
- The torch optimizer sits under DeepSpeed's wrapper as `.optimizer`; the wrapper keeps
  the flat fp32 tensors that the torch optimizer updates under one of several names.
- ZeRO-1/2 and bf16 link those fragments to Adam's state lazily, at the first step.
- Without ZeRO in fp32, DeepSpeed clips in `clip_fp32_gradients` and discards the norm.
- The pipeline engine leaves a step's loss, averaged over data-parallel ranks, in
  `dp_group_loss`, and marks the second copy of a tied weight `ds_pipe_replicated`.
"""

from __future__ import annotations

import functools
import math
from contextlib import nullcontext
from typing import Callable, Optional

import deepspeed
import torch
from deepspeed.utils import (
    safe_get_full_fp32_param,
    safe_get_full_optimizer_state,
    safe_set_full_fp32_param,
    safe_set_full_optimizer_state,
)

# Where DeepSpeed's optimizer wrappers keep the flat fp32 tensors the torch optimizer updates
# (ZeRO-3 hands them to the optimizer's param_groups only during its step).
_FLAT_FP32_GROUPS = ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition")
STEP_COUNTERS = ("global_steps", "global_samples", "skipped_steps")


def torch_optimizer(ds_engine) -> torch.optim.Optimizer:
    """The torch AdamW underneath DeepSpeed's ZeRO or bf16 wrapper (or the optimizer itself)."""
    optimizer = ds_engine.optimizer
    return getattr(optimizer, "optimizer", optimizer)


def full_shape(param: torch.nn.Parameter) -> torch.Size:
    """A parameter's shape before ZeRO-3 partitioned it."""
    return getattr(param, "ds_shape", param.shape)


def partitioned_by_zero3(param: torch.nn.Parameter) -> bool:
    return hasattr(param, "ds_id")


def managed_by_deepspeed(param: torch.nn.Parameter) -> bool:
    """ZeRO-3 (ds_id), or ZeRO-1/2 / bf16 (fp32 masters linked through _hp_mapping)."""
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def pipe_replicated(param: torch.nn.Parameter) -> bool:
    """The pipeline stage's second copy of a tied weight (the other stage owns it)."""
    return getattr(param, "ds_pipe_replicated", False)


def link_fragments_to_adam_state(ds_engine) -> None:
    """ZeRO-1/2 and bf16 connect each parameter's fp32 fragment to Adam's state at the
    first step only; after a load or a manual state set-up it must be done explicitly."""
    link = getattr(ds_engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()


def optimized_tensors(ds_engine) -> list[torch.Tensor]:
    """The tensors the torch optimizer keeps Adam state for (flat fp32 partitions under ZeRO)."""
    for attribute in _FLAT_FP32_GROUPS:
        groups = getattr(ds_engine.optimizer, attribute, None)
        if groups:
            return list(groups)
    return [p for group in torch_optimizer(ds_engine).param_groups for p in group["params"]]


def step_counters(ds_engine) -> dict:
    return {key: getattr(ds_engine, key) for key in STEP_COUNTERS}


def set_step_counters(ds_engine, counters: dict) -> None:
    for key, value in counters.items():
        setattr(ds_engine, key, value)


def guard_fp32_step(ds_engine, clip: Callable[[], torch.Tensor]) -> None:
    """Without ZeRO in fp32 DeepSpeed neither keeps the gradient norm nor skips a non-finite step:
    its own clipping becomes a no-op and the torch optimizer's `step` first calls `clip` (the
    norm, clipping when asked) and skips the update when the norm is not finite. The skip sets
    the optimizer's `overflow`, which DeepSpeed reads as it does its ZeRO and bf16 optimizers':
    no LR step, one more `skipped_steps`, `was_step_applied()` False."""
    ds_engine.clip_fp32_gradients = lambda: None
    optimizer = ds_engine.optimizer
    step = optimizer.step
    optimizer.overflow = False

    @functools.wraps(step)  # keeps the marks torch's LR scheduler put on `step` (else it warns)
    def guarded_step(*args, **kwargs):
        optimizer.overflow = not math.isfinite(clip())
        return None if optimizer.overflow else step(*args, **kwargs)

    optimizer.step = guarded_step


def pipeline_loss(ds_engine) -> torch.Tensor:
    """The pipeline engine's loss of the last `train_batch`, averaged over data-parallel ranks."""
    return ds_engine.dp_group_loss


def read_master(param: torch.nn.Parameter, adam_key: Optional[str], optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """The data-parallel-full fp32 master (adam_key None) or Adam state `adam_key` of `param`
    (collective over the data-parallel group under ZeRO)."""
    if managed_by_deepspeed(param):
        return safe_get_full_fp32_param(param) if adam_key is None else safe_get_full_optimizer_state(param, adam_key)
    return param.data if adam_key is None else optimizer.state[param][adam_key]


def write_master(param: torch.nn.Parameter, adam_key: Optional[str], value: torch.Tensor,
                 optimizer: torch.optim.Optimizer) -> None:
    """Set the fp32 master (and the working copy) or Adam state `adam_key` of `param` from the
    data-parallel-full `value` (collective over the data-parallel group under ZeRO)."""
    if adam_key is not None:
        if managed_by_deepspeed(param):
            safe_set_full_optimizer_state(param, value, adam_key)
        else:
            optimizer.state[param][adam_key].copy_(value)
        return
    if managed_by_deepspeed(param):
        safe_set_full_fp32_param(param, value)
    with _gathered_for_update(param):
        param.data.copy_(value.to(param.dtype))


def _gathered_for_update(param: torch.nn.Parameter):
    """ZeRO-3: the whole parameter, whose data rank 0 of the group sets for all (every rank sets the same)."""
    if partitioned_by_zero3(param):
        return deepspeed.zero.GatheredParameters([param], modifier_rank=0)
    return nullcontext()
