"""Training state without a layout: the full model and its Adam state under canonical names.

`gather_state` (collective) reads a running engine of any layout into one
`PortableState` on rank 0: for every canonical parameter (single-process name,
megallm.model.llama) the full fp32 master weight and, optionally, Adam's `exp_avg` and
`exp_avg_sq`, plus the optimizer step, learning rate, LR-schedule state and DeepSpeed's
step counters. `apply_state` (collective) writes such a state into an engine of another
layout. Together they reshard a checkpoint (megallm.checkpoint.convert), and export and
import go through the same form.

How a rank's piece of a tensor relates to the full one:
- ZeRO-1/2 (and DeepSpeed's bf16 optimizer) keep fp32 masters and Adam state as slices
  of flat partitions, ZeRO-3 as partitions of each parameter: DeepSpeed's
  `safe_get_full_*` / `safe_set_full_*` assemble and scatter them over the
  data-parallel group. Without ZeRO in fp32 the parameter is its own master and the
  torch optimizer's state is keyed by it.
- Tensor parallelism splits a parameter along `partition_dim`; a strided split
  (`[gate; up]`, stride 2) hands rank r the parts r, tp + r, ... (`tensor_parallel_slice`).
- Vocabulary rows beyond `model.vocab_size` (padding for TP) are dropped on gather and
  restored as zeros on apply: their logits are masked to -inf, so they never matter.
- Pipeline stages each hold their own layers; a tied embedding lives on the first and
  the last stage, and both get the same values.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megallm.model.config import ModelConfig
from megallm.model.llama import VOCAB_PARAMETERS

ADAM_KEYS = ("exp_avg", "exp_avg_sq")


@dataclass
class PortableState:
    weights: dict[str, torch.Tensor]  # canonical name -> full fp32 tensor, vocabulary rows trimmed
    adam: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # "exp_avg" -> {name: tensor}; empty: none
    optimizer_step: int = 0  # Adam's step count (bias correction)
    lr: Optional[float] = None  # the learning rate the next optimizer step applies
    scheduler: Optional[dict] = None  # LambdaLR state (last_epoch, ...)
    counters: dict = field(default_factory=dict)  # DeepSpeed engine's global_steps, global_samples, skipped_steps

    def save(self, path: Path) -> None:
        torch.save(asdict(self), path)

    @classmethod
    def load(cls, path: Path) -> "PortableState":
        # mmap: the processes of one machine share the pages instead of each holding a copy
        return cls(**torch.load(path, map_location="cpu", mmap=True, weights_only=False))


# ---- tensor parallelism ---------------------------------------------------------------------
def _tp_split(param: torch.nn.Parameter) -> Optional[tuple[int, int]]:
    """(dim, stride) of a tensor-parallel parameter, None if every TP rank holds all of it."""
    if ps.get_tensor_model_parallel_world_size() == 1 or not getattr(param, "tensor_model_parallel", False):
        return None
    return param.partition_dim, getattr(param, "partition_stride", 1)


def gather_tensor_parallel(shard: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    """The full tensor of a TP-split parameter (collective over the TP group); others as they are."""
    split = _tp_split(param)
    if split is None:
        return shard
    dim, stride = split
    tp = ps.get_tensor_model_parallel_world_size()
    pieces = [torch.empty_like(shard) for _ in range(tp)]
    dist.all_gather(pieces, shard.contiguous(), group=ps.get_tensor_model_parallel_group())
    # Rank r holds [part_0 of r, ..., part_(stride-1) of r]; the full tensor is part_0 of all ranks, then part_1 ...
    chunks = [piece.chunk(stride, dim=dim) for piece in pieces]
    return torch.cat([chunks[r][s] for s in range(stride) for r in range(tp)], dim=dim)


def tensor_parallel_slice(full: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    """This TP rank's part of `full` (inverse of `gather_tensor_parallel`)."""
    split = _tp_split(param)
    if split is None:
        return full
    dim, stride = split
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    chunks = full.chunk(tp * stride, dim=dim)
    return torch.cat([chunks[s * tp + rank] for s in range(stride)], dim=dim)


# ---- one parameter's master weight and Adam state, whatever the ZeRO stage -------------------
def _full_shape(param: torch.nn.Parameter) -> torch.Size:
    return getattr(param, "ds_shape", param.shape)  # ZeRO-3 keeps the unpartitioned shape here


def _managed_by_deepspeed(param: torch.nn.Parameter) -> bool:
    """ZeRO-3 (ds_id), or ZeRO-1/2 / bf16 (fp32 masters linked through _hp_mapping)."""
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def torch_optimizer(engine) -> torch.optim.Optimizer:
    """The torch AdamW underneath DeepSpeed's ZeRO or bf16 wrapper (or the optimizer itself)."""
    optimizer = engine.optimizer
    return getattr(optimizer, "optimizer", optimizer)


def _read(engine, param: torch.nn.Parameter, key: Optional[str]) -> torch.Tensor:
    """The data-parallel-full fp32 master (key None) or Adam state `key` of this TP shard (collective)."""
    if _managed_by_deepspeed(param):
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        value = safe_get_full_fp32_param(param) if key is None else safe_get_full_optimizer_state(param, key)
    else:
        value = param.data if key is None else torch_optimizer(engine).state[param][key]
    return value.detach().float().reshape(_full_shape(param))


def _write(engine, param: torch.nn.Parameter, key: Optional[str], value: torch.Tensor) -> None:
    """Set the master (and the working copy) or Adam state `key` of this TP shard (collective)."""
    value = value.to(device=param.device, dtype=torch.float32).reshape(_full_shape(param))
    if key is not None:
        if _managed_by_deepspeed(param):
            from deepspeed.utils import safe_set_full_optimizer_state

            safe_set_full_optimizer_state(param, value, key)
        else:
            torch_optimizer(engine).state[param][key].copy_(value)
        return
    if _managed_by_deepspeed(param):
        from deepspeed.utils import safe_set_full_fp32_param

        safe_set_full_fp32_param(param, value)
    with _gathered_for_update(param):
        param.data.copy_(value.to(param.dtype))


def _gathered_for_update(param: torch.nn.Parameter):
    """ZeRO-3: the whole parameter, whose data rank 0 of the group sets for all (every rank sets the same)."""
    if hasattr(param, "ds_id"):
        import deepspeed

        return deepspeed.zero.GatheredParameters([param], modifier_rank=0)
    return nullcontext()


# ---- whole model ------------------------------------------------------------------------------
def _pad_vocab(name: str, tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if name not in VOCAB_PARAMETERS or tensor.shape[0] == rows:
        return tensor
    padded = tensor.new_zeros((rows, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    return padded


def _full_rows(param: torch.nn.Parameter) -> int:
    """Rows of the whole (all TP ranks) tensor: the padded vocabulary for the vocabulary parameters."""
    split = _tp_split(param)
    rows = _full_shape(param)[0]
    return rows * ps.get_tensor_model_parallel_world_size() if split and split[0] == 0 else rows


def _parameters(engine) -> Iterator[tuple[str, torch.nn.Parameter]]:
    return engine.canonical_parameters()  # same order on all ranks of a stage


def has_adam_state(engine) -> bool:
    """Whether the optimizer has taken a step (Adam's state exists) on every rank (collective)."""
    state = torch_optimizer(engine).state
    flag = torch.tensor([1.0 if state and all(ADAM_KEYS[0] in s for s in state.values()) else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _optimizer_step(engine) -> int:
    for entry in torch_optimizer(engine).state.values():
        if "step" in entry:
            return int(entry["step"])
    return 0


def gather_state(engine, model_cfg: ModelConfig, with_optimizer: bool = True) -> Optional[PortableState]:
    """Collective. `engine`: a megallm ParallelEngine. Rank 0 gets the state, others None.

    `with_optimizer` is dropped (no Adam state gathered) when the optimizer has not stepped yet.
    """
    with_optimizer = with_optimizer and has_adam_state(engine.engine)
    if with_optimizer:
        link = getattr(engine.engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
        if link is not None:  # ZeRO-1/2 and bf16 link their fragments to Adam's state at the first step only
            link()
    keep = ps.get_data_parallel_rank() == 0 and ps.get_tensor_model_parallel_rank() == 0
    keys: tuple[Optional[str], ...] = (None, *ADAM_KEYS) if with_optimizer else (None,)
    local: dict[Optional[str], dict[str, torch.Tensor]] = {key: {} for key in keys}
    for name, param in _parameters(engine):
        for key in keys:
            full = gather_tensor_parallel(_read(engine.engine, param, key), param)
            if keep:
                if name in VOCAB_PARAMETERS:
                    full = full[: model_cfg.vocab_size]
                local[key][name] = full.to("cpu", copy=True)
    everyone = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(local, everyone, dst=0)
    if dist.get_rank() != 0:
        return None
    merged: dict[Optional[str], dict[str, torch.Tensor]] = {key: {} for key in keys}
    for part in everyone:  # rank order: the first stage's copy of a tied weight wins
        for key, tensors in part.items():
            for name, tensor in tensors.items():
                merged[key].setdefault(name, tensor)
    ds = engine.engine
    return PortableState(
        weights=dict(sorted(merged[None].items())),
        adam={key: dict(sorted(merged[key].items())) for key in ADAM_KEYS if key in merged},
        optimizer_step=_optimizer_step(ds) if with_optimizer else 0,
        lr=torch_optimizer(ds).param_groups[0]["lr"],
        scheduler=engine.scheduler.state_dict(),
        counters={"global_steps": ds.global_steps, "global_samples": ds.global_samples,
                  "skipped_steps": ds.skipped_steps},
    )


# Where DeepSpeed's optimizer wrappers keep the flat fp32 tensors the torch optimizer updates
# (ZeRO-3 hands them to the optimizer's param_groups only during its step).
_FLAT_FP32_GROUPS = ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition")


def _optimized_tensors(ds_engine) -> list[torch.Tensor]:
    for attribute in _FLAT_FP32_GROUPS:
        groups = getattr(ds_engine.optimizer, attribute, None)
        if groups:
            return list(groups)
    return [p for group in torch_optimizer(ds_engine).param_groups for p in group["params"]]


def _materialise_adam_state(ds_engine, step: int) -> None:
    """Create Adam's state (zeros, `step` taken) for every tensor the torch optimizer updates,
    as its first step would, so that it can be overwritten piece by piece."""
    optimizer = torch_optimizer(ds_engine)
    for p in _optimized_tensors(ds_engine):
        optimizer.state[p] = {"step": torch.tensor(float(step)), "exp_avg": torch.zeros_like(p),
                              "exp_avg_sq": torch.zeros_like(p)}
    link = getattr(ds_engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()


def apply_state(engine, state: PortableState, model_cfg: ModelConfig) -> None:
    """Collective: every rank passes the same `state`; weights (and Adam state, LR schedule and
    step counters if the state has them) of this rank's part are set from it."""
    ds = engine.engine
    with_optimizer = bool(state.adam)
    if with_optimizer:
        _materialise_adam_state(ds, state.optimizer_step)
    for name, param in _parameters(engine):
        if name not in state.weights:
            raise KeyError(f"the state has no tensor {name!r} that this model needs")
        rows = _full_rows(param)
        sources = {None: state.weights, **(state.adam if with_optimizer else {})}
        for key, tensors in sources.items():
            full = _pad_vocab(name, tensors[name], rows)
            _write(ds, param, key, tensor_parallel_slice(full, param))
    if state.lr is not None:
        for group in torch_optimizer(ds).param_groups:
            group["lr"] = state.lr
    if state.scheduler is not None:
        engine.scheduler.load_state_dict(_fit_scheduler_state(state.scheduler, len(engine.scheduler.base_lrs)))
    for key, value in state.counters.items():
        setattr(ds, key, value)


def _fit_scheduler_state(saved: dict, groups: int) -> dict:
    """LambdaLR's per-group lists sized for this optimizer's groups (every group has the same LR)."""
    fitted = dict(saved)
    for key in ("base_lrs", "_last_lr", "lr_lambdas"):
        if isinstance(saved.get(key), list) and saved[key]:
            fitted[key] = [saved[key][0]] * groups
    return fitted
