"""Warmup-stable-decay next to cosine: the plateau, the decay's shapes and length, and which
resumed schedules continue the one a checkpoint was trained with."""

from __future__ import annotations

import math

import pytest

from megallm.config import OptimConfig
from megallm.optim.schedule import decay_start, lr_multiplier, schedule_change

WSD = OptimConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2, decay_shape="linear")


def test_wsd_holds_the_peak_then_decays_over_its_last_fifth():
    total = 100
    assert decay_start(WSD, total) == 80
    assert [lr_multiplier(s, WSD, total) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert all(lr_multiplier(s, WSD, total) == 1.0 for s in range(10, 81))
    assert lr_multiplier(90, WSD, total) == pytest.approx(0.5)  # half way through a linear decay
    assert lr_multiplier(99, WSD, total) == pytest.approx(0.05)
    assert lr_multiplier(100, WSD, total) == 0.0 and lr_multiplier(150, WSD, total) == 0.0


@pytest.mark.parametrize("shape, half_way", [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))])
def test_decay_shapes_and_the_floor(shape, half_way):
    cfg = OptimConfig(lr=1e-3, warmup_steps=0, min_lr_ratio=0.1, schedule="wsd", decay_steps=40, decay_shape=shape)
    assert decay_start(cfg, 200) == 160  # decay_steps wins over decay_fraction
    assert lr_multiplier(180, cfg, 200) == pytest.approx(0.1 + 0.9 * half_way)
    assert lr_multiplier(200, cfg, 200) == pytest.approx(0.1)
    decay = [lr_multiplier(s, cfg, 200) for s in range(160, 201)]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # strictly falling to the floor


def test_the_stable_phase_does_not_depend_on_the_length():
    """What makes branching work: a run of any length up to its decay start has the LRs of a longer one."""
    long = [lr_multiplier(s, WSD, 1000) for s in range(800)]
    for total in (100, 250, 500):
        assert [lr_multiplier(s, WSD, total) for s in range(decay_start(WSD, total))] == long[:decay_start(WSD, total)]


def test_which_resumes_continue_the_schedule():
    cosine = OptimConfig(lr=1e-3, warmup_steps=10)
    # Extending a cosine run changes every LR after warmup: reported, with the fix.
    change = schedule_change(50, (cosine, 100), (cosine, 200))
    assert change and "train.steps 100 -> 200" in change and "optim.schedule=wsd" in change and "differ from step 12" in change
    # A WSD run extended, or a cool-down branched at or before the new decay start: nothing to report.
    assert schedule_change(50, (WSD, 100), (WSD, 1000)) is None
    assert schedule_change(80, (WSD, 1000), (WSD, 100)) is None
    # Branched too late: the branch's decay would have started before the checkpoint.
    late = schedule_change(90, (WSD, 1000), (WSD, 100))
    assert late and "at or before step 80" in late
    # The same schedule: nothing to report; another peak LR: reported.
    assert schedule_change(50, (cosine, 100), (cosine, 100)) is None
    assert "optim settings changed" in schedule_change(50, (cosine, 100), (OptimConfig(lr=2e-3, warmup_steps=10), 100))


def test_a_wsd_run_too_short_for_its_warmup_and_decay_is_refused():
    """With warmup 100 and 20% decay, a 100-step run would be all warmup: no cool-down, a wrong budget point."""
    from megallm.config import check_config, compose_config
    from megallm.errors import ConfigError

    cfg, _ = compose_config(["+model=tiny", "model.vocab_size=512", "optim.schedule=wsd", "train.steps=100",
                             "train.seq_len=64", "train.global_batch_tokens=512", "train.micro_batch_size=8"])
    with pytest.raises(ConfigError, match=r"optim.warmup_steps=100 and the WSD decay's 20 steps exceed "
                                          r"train.steps=100"):
        check_config(cfg, 1)
    cfg.optim.warmup_steps = 80
    check_config(cfg, 1)  # warmup 80 + decay 20 fits exactly
