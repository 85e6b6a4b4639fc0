"""AdamW with decoupled weight decay on matrices only, under the LR schedule.

`keep_run_settings` is the policy for a checkpoint that has not trained yet (step 0,
e.g. imported from Hugging Face): loading it must not replace the resuming run's
hyperparameters and schedule, only the weights. `follow_schedule` is the policy for a
trained one: its step counts, but the LR from there on is this run's (an extended or
branched WSD run, a changed peak LR), not the one the checkpoint saved.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from megallm.config import OptimConfig
from megallm.optim.schedule import lr_multiplier


def param_groups(model: torch.nn.Module, weight_decay: float,
                 full_shape: Callable[[torch.nn.Parameter], torch.Size] = lambda p: p.shape) -> list[dict]:
    """Weight decay on matrices (embeddings, linears), none on vectors (norm scales).

    `full_shape`: a parameter's unpartitioned shape (ZeRO-3 partitions flatten parameters
    at construction; the engine passes how to see through that).
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if len(full_shape(param)) >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(groups: list[dict], cfg: OptimConfig, total_steps: int):
    """AdamW over `groups` (from `param_groups`) and the LambdaLR that applies the schedule."""
    kernel = {"fused": True} if cfg.fused else {"foreach": True}  # optim.fused: one fused kernel for all tensors
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **kernel)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg, total_steps))
    return optimizer, scheduler


@contextlib.contextmanager
def keep_run_settings(optimizer: torch.optim.Optimizer, scheduler) -> Iterator[None]:
    """Restore the hyperparameters of `optimizer`'s groups (lr, betas, weight decay, ...) and
    the scheduler's state after the block, which loads a checkpoint that replaced them."""
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    schedule = scheduler.state_dict()
    yield
    for group, saved in zip(optimizer.param_groups, settings):  # loading made new group dicts
        group.update(saved)
    scheduler.load_state_dict(schedule)


def follow_schedule(optimizer: torch.optim.Optimizer, scheduler, peak_lr: float) -> None:
    """Set every group's LR to this run's schedule at the scheduler's step, with `peak_lr`: a
    loaded scheduler and optimizer bring the peak and the next LR of the run that saved them."""
    scheduler.base_lrs = [peak_lr] * len(optimizer.param_groups)
    lrs = [base * schedule(scheduler.last_epoch) for base, schedule in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
        group["initial_lr"] = peak_lr
    scheduler._last_lr = lrs
