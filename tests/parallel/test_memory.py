"""The dry run's memory estimate: per-stage parameters as built, and how each layout option scales it."""

from __future__ import annotations

import math

import pytest

from megallm.model.config import ModelConfig
from megallm.parallel.memory import estimate_memory, stage_parameters

CFG = dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, ffn_hidden_size=704, vocab_size=1000)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("pp", [1, 2, 4])
def test_stage_parameters_match_built_layers(world_of_one, tied, pp):
    from megatron.core import parallel_state

    from megallm.model.llama import layer_defs

    cfg = ModelConfig(**CFG, tie_embeddings=tied)
    defs = layer_defs(cfg, seed=0, tp_group=parallel_state.get_tensor_model_parallel_group())
    counts = [sum(p.numel() for p in d.build(meta=True).parameters()) for d in defs]
    if tied:  # the output position reuses the embedding: built again only on another stage
        counts[-1] = counts[0] if pp > 1 else 0
    per_stage = math.ceil(cfg.num_layers / pp)
    first = counts[0] + sum(counts[1:1 + per_stage])
    last = sum(counts[1 + cfg.num_layers - per_stage:])
    expected = sum(counts) if pp == 1 else max(first, last)
    assert stage_parameters(cfg, tp=1, pp=pp) == expected


def test_layout_options_scale_the_estimate():
    cfg = ModelConfig(**{**CFG, "num_layers": 32, "vocab_size": 32000})

    def est(**kw):
        base = dict(seq_len=2048, micro_batch_size=1, precision="bf16", zero_stage=0, dp=1, fused_attention=True)
        return estimate_memory(cfg, **{**base, **kw})

    one = est()
    tp2, pp2 = est(tp=2), est(tp=1, pp=2, micro_batches=8)
    assert 0.49 < tp2.weights / one.weights < 0.52  # all but the norm weights split
    assert 0.5 < pp2.weights / one.weights < 0.6  # half the blocks plus the embedding or output
    assert est(tp=2, pp=2, micro_batches=8).weights < tp2.weights
    # 1F1B keeps pp micro-batches in flight on the first stage (2 x half the layers); the last
    # stage keeps one but adds the logits. The larger of the two is reported.
    layers = one.activations - tokens_logits(cfg)
    assert pp2.activations == pytest.approx(max(layers, layers / 2 + tokens_logits(cfg)), rel=1e-9)
    assert est(recompute="full").activations < est(recompute="selective").activations <= one.activations
    fp32 = dict(precision="fp32", fused_attention=False)
    assert est(recompute="selective", **fp32).activations < 0.5 * est(**fp32).activations  # scores dominate
    assert est(tp=2, sequence_parallel=True).activations < tp2.activations
    assert est(zero_stage=3, dp=8).total < est(zero_stage=1, dp=8).total < one.total


def tokens_logits(cfg: ModelConfig) -> float:
    return 2048 * cfg.vocab_size * 6  # bf16 logits and their fp32 copy
