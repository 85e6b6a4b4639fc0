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


# Parameters of the published checkpoints (the safetensors totals on their model pages).
PUBLISHED = {
    "1b": 1_235_814_400,  # meta-llama/Llama-3.2-1B
    "3b": 3_212_749_824,  # meta-llama/Llama-3.2-3B
    "8b": 8_030_261_248,  # meta-llama/Llama-3.1-8B
    "7b": 6_738_415_616,  # meta-llama/Llama-2-7b-hf
    "13b": 13_015_864_320,  # meta-llama/Llama-2-13b-hf
    "70b": 68_976_648_192,  # meta-llama/Llama-2-70b-hf
    "tinyllama_1b": 1_100_048_384,  # TinyLlama/TinyLlama_v1.1
    "smollm2_135m": 134_515_008,  # HuggingFaceTB/SmolLM2-135M
    "smollm2_360m": 361_821_120,  # HuggingFaceTB/SmolLM2-360M
    "smollm2_1b7": 1_711_376_384,  # HuggingFaceTB/SmolLM2-1.7B
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_presets_match_published_parameter_counts(world_of_one, name):
    from megallm.model.llama import build_model

    cfg = load_model_config(name)
    assert parameter_count(cfg, padded=False).total == PUBLISHED[name]
    model = build_model(cfg, device="meta")  # as built: the vocabulary padded to a multiple of 128
    built = sum(p.numel() for p in model.parameters())
    assert all(p.device.type == "meta" for p in model.parameters())
    assert built == parameter_count(cfg).total


def test_llama3_presets_carry_their_rope_scaling():
    for name, factor in (("1b", 32.0), ("3b", 32.0), ("8b", 8.0)):
        cfg = load_model_config(name)
        assert (cfg.rope_scaling.rope_type, cfg.rope_scaling.factor, cfg.max_position_embeddings) == \
            ("llama3", factor, 131072)
        assert cfg.rope_scaling.original_max_position_embeddings == 8192 and cfg.rope_theta == 500000.0
    assert load_model_config("7b").rope_scaling.rope_type == "default" and load_model_config("7b").max_position_embeddings == 4096


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
