"""The optimizer's policy: the LR schedule, which weights decay, and what a load may not replace."""

from __future__ import annotations

import math

import pytest
import torch

from megallm.config import OptimConfig
from megallm.optim.adamw import build_optimizer, keep_run_settings, param_groups
from megallm.optim.schedule import lr_multiplier

CFG = OptimConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
TOTAL = 110  # 10 warmup + 100 decay steps


def test_warmup_is_linear_and_starts_above_zero():
    assert [lr_multiplier(s, CFG, TOTAL) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr_multiplier(9, CFG, TOTAL) == 1.0  # the last warmup step reaches the peak


def test_cosine_decays_from_peak_to_floor_and_stays_there():
    assert lr_multiplier(10, CFG, TOTAL) == 1.0  # cos(0)
    assert lr_multiplier(60, CFG, TOTAL) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: the mean of peak and floor
    assert lr_multiplier(35, CFG, TOTAL) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_multiplier(TOTAL, CFG, TOTAL) == pytest.approx(0.1)
    assert lr_multiplier(TOTAL + 50, CFG, TOTAL) == pytest.approx(0.1)
    decay = [lr_multiplier(s, CFG, TOTAL) for s in range(10, TOTAL + 1)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))  # monotone


def test_no_warmup_and_a_schedule_shorter_than_warmup():
    no_warmup = OptimConfig(lr=1e-3, warmup_steps=0, min_lr_ratio=0.0)
    assert lr_multiplier(0, no_warmup, 100) == 1.0
    assert lr_multiplier(100, no_warmup, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_multiplier(20, CFG, 5) == pytest.approx(0.1)  # total <= warmup: the floor once warmed up


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(8, 4)
        self.linear = torch.nn.Linear(4, 4, bias=False)
        self.norm_weight = torch.nn.Parameter(torch.ones(4))
        self.frozen = torch.nn.Parameter(torch.ones(4, 4), requires_grad=False)


def test_weight_decay_on_matrices_only():
    model = Tiny()
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.embedding.weight), id(model.linear.weight)}
    assert [id(p) for p in no_decay["params"]] == [id(model.norm_weight)]  # frozen weights in neither


def test_weight_decay_groups_see_through_partitioned_shapes():
    """ZeRO-3 flattens a parameter at construction; the group follows its full shape."""
    model = Tiny()
    with torch.no_grad():
        model.linear.weight = torch.nn.Parameter(model.linear.weight.reshape(-1))  # 1-D, as a partition is
    full_shapes = {id(model.linear.weight): torch.Size([4, 4])}
    decay, _ = param_groups(model, 0.1, full_shape=lambda p: full_shapes.get(id(p), p.shape))
    assert any(p is model.linear.weight for p in decay["params"])
    decay, no_decay = param_groups(model, 0.1)  # without it the flattened matrix would lose its decay
    assert any(p is model.linear.weight for p in no_decay["params"])


def test_scheduler_applies_the_schedule_to_every_group():
    model = Tiny()
    optimizer, scheduler = build_optimizer(param_groups(model, 0.1), CFG, TOTAL)
    for step in range(15):
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(CFG.lr * lr_multiplier(step, CFG, TOTAL))
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["betas"] == (CFG.beta1, CFG.beta2) and optimizer.param_groups[0]["eps"] == CFG.eps


def test_loading_an_untrained_checkpoint_keeps_the_run_settings():
    """What a step-0 checkpoint's load replaces (hyperparameters, schedule) comes back afterwards."""
    model = Tiny()
    optimizer, scheduler = build_optimizer(param_groups(model, 0.1), CFG, TOTAL)
    other, other_scheduler = build_optimizer(param_groups(Tiny(), 0.5), OptimConfig(lr=9.0, beta1=0.5), 50)
    for _ in range(7):
        other.step()
        other_scheduler.step()
    before = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    with keep_run_settings(optimizer, scheduler):
        optimizer.load_state_dict(other.state_dict())
        scheduler.load_state_dict(other_scheduler.state_dict())
        assert optimizer.param_groups[0]["lr"] != before[0]["lr"]  # the load did replace them
    assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups] == before
    assert scheduler.last_epoch == 0 and optimizer.param_groups[0]["lr"] == pytest.approx(CFG.lr / 10)
