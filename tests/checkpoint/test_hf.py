"""Export to Hugging Face Llama: the folder loads in `transformers` offline and gives megallm's
logits; Hugging Face -> megallm -> Hugging Face returns the same tensors bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from megallm.checkpoint.hf import (
    from_hf_state_dict,
    read_hf_folder,
    to_hf_state_dict,
    write_hf_folder,
)
from megallm.errors import ConversionError
from megallm.model.config import ModelConfig
from tests.helpers import canonical_weights, random_model, tiny_tokenizer

transformers = pytest.importorskip("transformers")

CONFIGS = {  # vocab 300 is padded to 384 rows by megallm
    "mha_tied": dict(num_heads=4, num_kv_heads=4, tie_embeddings=True),
    "gqa2_untied": dict(num_heads=4, num_kv_heads=2, tie_embeddings=False),
    "mqa_tied": dict(num_heads=4, num_kv_heads=1, tie_embeddings=True),
}


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tiny_tokenizer(path)
    return path


@pytest.mark.parametrize("shape", list(CONFIGS))
def test_exported_folder_gives_megallm_logits_in_transformers(world_of_one, tokenizer_file, tmp_path, shape):
    from megallm.data.tokenizer import load_tokenizer

    cfg = ModelConfig(name=shape, hidden_size=64, num_layers=2, ffn_hidden_size=96, vocab_size=300,
                      rope_theta=500.0, norm_eps=1e-6, **CONFIGS[shape])
    model = random_model(cfg, seed=11)
    eos = load_tokenizer(tokenizer_file).token_to_id("<|endoftext|>")
    folder = write_hf_folder(canonical_weights(model, cfg), cfg, tmp_path / "hf", tokenizer_file=tokenizer_file,
                             max_positions=128, max_shard_bytes=100_000)  # several shards
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "hf.partial").exists()

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens).transpose(0, 1)[..., : cfg.vocab_size]  # [s, b, padded] -> [b, s, vocab]
        theirs = hf_model(tokens).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    assert ours.abs().max().item() > 0.1  # logits that can disagree

    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    text = "def export(model): return model"
    assert hf_tok(text)["input_ids"] == load_tokenizer(tokenizer_file).encode(text).ids
    assert hf_tok.eos_token_id == eos

    # Hugging Face -> megallm -> Hugging Face: the same tensors, bit for bit.
    hf_weights = {k: v for k, v in hf_model.state_dict().items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    back = to_hf_state_dict(from_hf_state_dict(hf_weights, cfg), cfg)
    assert sorted(back) == sorted(hf_weights)
    assert all(torch.equal(back[k], hf_weights[k]) for k in back)  # bitwise: copies and permutations only
    weights, read_cfg = read_hf_folder(folder)
    assert read_cfg.num_kv_heads == cfg.num_kv_heads and read_cfg.tie_embeddings == cfg.tie_embeddings
    assert all(torch.equal(weights[k], w) for k, w in canonical_weights(model, cfg).items())


def test_unsupported_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MistralForCausalLM"]}))
    with pytest.raises(ConversionError, match="architecture 'MistralForCausalLM' is not supported"):
        read_hf_folder(tmp_path)
    with pytest.raises(ConversionError, match="not a Hugging Face model folder"):
        read_hf_folder(tmp_path / "nothing")
