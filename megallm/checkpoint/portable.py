"""Training state without a layout: the full model and its Adam state under canonical names.

`gather_state` (collective) reads a running engine of any layout into one
`PortableState` on rank 0: for every canonical parameter (single-process name,
megallm.model.llama) the full fp32 master weight and, optionally, Adam's `exp_avg` and
`exp_avg_sq`, plus the optimizer step, learning rate, LR-schedule state and DeepSpeed's
step counters. `apply_state` (collective) writes such a state into an engine of another
layout. Together they reshard a checkpoint (megallm.checkpoint.convert), and export and
import go through the same form.

How a rank's piece of a tensor relates to the full one:
- Over the data-parallel ranks (ZeRO's partitions) the engine assembles and scatters
  each parameter's fp32 master and Adam state (`ParallelEngine.master` / `set_master`).
- Tensor parallelism splits a parameter along `partition_dim`; a strided split
  (`[gate; up]`, stride 2) hands rank r the parts r, tp + r, ... (`tensor_parallel_slice`).
- Vocabulary rows beyond `model.vocab_size` (padding for TP) are dropped on gather and
  restored as zeros on apply: their logits are masked to -inf, so they never matter.
- Pipeline stages each hold their own layers; a tied embedding lives on the first and
  the last stage, and both get the same values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megallm.engine.engine import ADAM_KEYS, ParallelEngine
from megallm.model.config import ModelConfig
from megallm.model.llama import VOCAB_PARAMETERS


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
    return param.partition_dim, getattr(param, "partition_stride", 1)  # type: ignore[attr-defined]  # Megatron's


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


# ---- whole model ------------------------------------------------------------------------------
def _pad_vocab(name: str, tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if name not in VOCAB_PARAMETERS or tensor.shape[0] == rows:
        return tensor
    padded = tensor.new_zeros((rows, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    return padded


def _full_rows(engine: ParallelEngine, param: torch.nn.Parameter) -> int:
    """Rows of the whole (all TP ranks) tensor: the padded vocabulary for the vocabulary parameters."""
    split = _tp_split(param)
    rows = engine.full_shape(param)[0]
    return rows * ps.get_tensor_model_parallel_world_size() if split and split[0] == 0 else rows


def gather_state(engine: ParallelEngine, model_cfg: ModelConfig,
                 with_optimizer: bool = True) -> Optional[PortableState]:
    """Collective. Rank 0 gets the state, others None.

    `with_optimizer` is dropped (no Adam state gathered) when the optimizer has not stepped yet.
    """
    with_optimizer = with_optimizer and engine.has_adam_state()
    if with_optimizer:
        engine.prepare_adam_state_access()
    coords = engine.ctx.coords
    keep = coords.dp == 0 and coords.tp == 0
    keys: tuple[Optional[str], ...] = (None, *ADAM_KEYS) if with_optimizer else (None,)
    local: dict[Optional[str], dict[str, torch.Tensor]] = {key: {} for key in keys}
    for name, param in engine.canonical_parameters():
        for key in keys:
            full = gather_tensor_parallel(engine.master(param, key), param)
            if keep:
                if name in VOCAB_PARAMETERS:
                    full = full[: model_cfg.vocab_size]
                local[key][name] = full.to("cpu", copy=True)
    everyone: Optional[list] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(local, everyone, dst=0)
    if everyone is None:  # not rank 0
        return None
    merged: dict[Optional[str], dict[str, torch.Tensor]] = {key: {} for key in keys}
    for part in everyone:  # rank order: the first stage's copy of a tied weight wins
        for key, tensors in part.items():
            for name, tensor in tensors.items():
                merged[key].setdefault(name, tensor)
    return PortableState(
        weights=dict(sorted(merged[None].items())),
        adam={key: dict(sorted(merged[key].items())) for key in ADAM_KEYS if key in merged},
        optimizer_step=engine.optimizer_step if with_optimizer else 0,
        lr=engine.optimizer.param_groups[0]["lr"],
        scheduler=engine.scheduler.state_dict(),
        counters=engine.step_counters,
    )


def apply_state(engine: ParallelEngine, state: PortableState, model_cfg: ModelConfig) -> None:
    """Collective: every rank passes the same `state`; weights (and Adam state, LR schedule and
    step counters if the state has them) of this rank's part are set from it."""
    with_optimizer = bool(state.adam)
    if with_optimizer:
        engine.create_adam_state(state.optimizer_step)
    for name, param in engine.canonical_parameters():
        if name not in state.weights:
            raise KeyError(f"the state has no tensor {name!r} that this model needs")
        sources: list[tuple[Optional[str], dict[str, torch.Tensor]]] = [(None, state.weights), *state.adam.items()]
        for key, tensors in sources:
            _set_full(engine, name, param, key, tensors[name])
    if state.lr is not None:
        engine.set_learning_rate(state.lr)
    if state.scheduler is not None:
        engine.scheduler.load_state_dict(_fit_scheduler_state(state.scheduler, len(engine.scheduler.base_lrs)))
    engine.set_step_counters(state.counters)


def apply_weights(engine: ParallelEngine, weights: dict[str, torch.Tensor]) -> list[str]:
    """Collective: every rank passes the same canonical `weights`; each parameter of this rank they hold
    is set from them (the optimizer state is left as it is). Returns the canonical names of the
    parameters they lack, which keep their initial values (a fine-tuning's new head)."""
    missing = []
    for name, param in engine.canonical_parameters():
        if name in weights:
            _set_full(engine, name, param, None, weights[name])
        else:
            missing.append(name)
    return missing


def _set_full(engine: ParallelEngine, name: str, param: torch.nn.Parameter, key: Optional[str],
              full: torch.Tensor) -> None:
    """This rank's piece of `param`'s master (key None) or Adam state `key` from the full tensor."""
    full = _pad_vocab(name, full, _full_rows(engine, param))
    engine.set_master(param, key, tensor_parallel_slice(full, param))


def _fit_scheduler_state(saved: dict, groups: int) -> dict:
    """LambdaLR's per-group lists sized for this optimizer's groups (every group has the same LR)."""
    fitted = dict(saved)
    for key in ("base_lrs", "_last_lr", "lr_lambdas"):
        if isinstance(saved.get(key), list) and saved[key]:
            fitted[key] = [saved[key][0]] * groups
    return fitted
