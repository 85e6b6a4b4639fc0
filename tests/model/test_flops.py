"""Parameter counts against published models, FLOPs per token, memory estimates."""

from __future__ import annotations

import pytest

from megallm.model.config import ModelConfig
from megallm.model.flops import flops_per_token, parameter_count
from megallm.parallel.memory import estimate_memory


def load_model_config(name: str) -> ModelConfig:
    from megallm.config import compose_config

    cfg, _ = compose_config([f"+model={name}"])
    return cfg.model


@pytest.mark.parametrize("name,published", [("1b", 1.24e9), ("7b", 6.74e9), ("13b", 13.0e9), ("70b", 69.0e9)])
def test_meta_build_matches_published_parameter_count(world_of_one, name, published):
    from megallm.model.llama import build_model

    cfg = load_model_config(name)
    model = build_model(cfg, device="meta")
    built = sum(p.numel() for p in model.parameters())
    assert all(p.device.type == "meta" for p in model.parameters())
    assert built == parameter_count(cfg).total
    assert abs(built - published) / published < 0.02, f"{name}: {built / 1e9:.3f}B vs {published / 1e9:.2f}B"


def test_flops_per_token_is_6n_plus_attention():
    cfg = load_model_config("7b")
    n_matmul = 32 * (4096 * 4096 * 4 + 3 * 4096 * 11008) + 32000 * 4096  # blocks' linears + output layer
    expected = 6 * n_matmul + 12 * 32 * 4096 * 2048  # PaLM: 6N + 12 L H Q T
    assert flops_per_token(cfg, 2048) == expected
    # The attention term grows with context; the matmul term does not.
    assert flops_per_token(cfg, 4096) - flops_per_token(cfg, 2048) == 12 * 32 * 4096 * 2048


def test_zero_stages_shard_model_states():
    cfg = load_model_config("1b")
    est = {z: estimate_memory(cfg, seq_len=2048, micro_batch_size=1, precision="bf16", zero_stage=z, dp=8,
                              fused_attention=True) for z in range(4)}
    params = parameter_count(cfg).total
    assert est[0].weights == 2 * params and est[0].gradients == 2 * params and est[0].optimizer == 12 * params
    assert est[1].optimizer == 12 * params / 8 and est[1].gradients == 2 * params
    assert est[2].gradients == 2 * params / 8 and est[2].weights == 2 * params
    assert est[3].weights == 2 * params / 8
    assert est[0].total > est[1].total > est[2].total > est[3].total
    assert len({e.activations for e in est.values()}) == 1  # ZeRO does not shard activations
