"""Hugging Face Llama folders as they are published, not as the installed transformers writes them:

- Llama-2-7b-hf's config.json (written by transformers 4.31) has no `rope_theta`: it reads as
  transformers reads it (10000, said in one line) and gives the `7b` preset's shape; a tiny
  model with that config.json (only the sizes shrunk; and again with a rope_theta) imports
  with transformers' logits and exports the same config.json, key for key and value for
  value (no `head_dim`, `rope_theta` or other key the original lacks);
- a tied model whose file also holds an `lm_head.weight` is read when that equals the
  embeddings and refused, naming the cause, when it differs;
- a config.json that is not JSON and a cut-short safetensors file are one-line errors naming
  the file, in import, verify, generate, evaluate (and info, which reads config.json).
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from megallm.cli.convert_ckpt import main as convert_main
from megallm.cli.evaluate import main as evaluate_main
from megallm.cli.generate import main as generate_main
from megallm.files import partial_path
from tests.helpers import assert_one_line_error, run_main
from tests.llama_families import build_tokenizer, save_family, save_published

transformers = pytest.importorskip("transformers")

# meta-llama/Llama-2-7b-hf config.json, verbatim (transformers 4.31.0.dev0).
LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False,
    "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": True, "vocab_size": 32000,
}
# The same config with the sizes of a test model; every key and every other value as published.
SHRUNK = {**LLAMA2_7B, "hidden_size": 64, "intermediate_size": 172, "num_attention_heads": 4,
          "num_hidden_layers": 2, "num_key_value_heads": 4}


def test_llama2_7b_config_reads_as_the_7b_preset():
    from megallm.checkpoint.hf_config import model_config_from_hf
    from megallm.config import compose_config

    preset = compose_config(["+model=7b"])[0].model.to_dict()
    assert model_config_from_hf(LLAMA2_7B, name="7b").to_dict() == preset
    # transformers 5's layout without rope_theta reads the same (its default_theta is 10000 too)
    layout5 = {**{k: v for k, v in LLAMA2_7B.items() if k != "rope_scaling"},
               "rope_parameters": {"rope_type": "default"}}
    assert model_config_from_hf(layout5, name="7b").to_dict() == preset


@pytest.fixture(scope="module", params=["as_published", "with_rope_theta"])
def llama2_folder(request, tmp_path_factory):
    """A tiny Llama 2 in float16 whose config.json is Llama-2-7b-hf's with the sizes shrunk (and, as later
    Llama 2 configs have it, a rope_theta), with a Llama 2-style tokenizer (<unk> <s> </s> at 0 1 2, as Llama 2's)."""
    config = {**SHRUNK, "vocab_size": build_tokenizer("llama2")[0].get_vocab_size()}
    if request.param == "with_rope_theta":
        config["rope_theta"] = 10000.0
    return save_published(config, tmp_path_factory.mktemp(request.param) / "hf")


def test_llama2_published_config_imports_and_exports_the_same_config(llama2_folder, tmp_path, capsys):
    imported, exported = tmp_path / "imported", tmp_path / "exported"
    original = json.loads((llama2_folder / "config.json").read_text())
    result = run_main(convert_main, ["import", llama2_folder, imported, "--weights-only"], capsys)
    assert result.returncode == 0, result.stderr
    notice = (f"{llama2_folder / 'config.json'} leaves out rope_theta: read as rope_theta=10000, "
              "transformers' Llama default")
    assert (notice in result.stderr) == ("rope_theta" not in original)
    assert "transformers computes megallm's logits" in result.stderr  # import's own check, at 64 tokens
    result = run_main(convert_main, ["info", imported], capsys)
    assert "model.rope_theta=10000.0" in result.stdout
    result = run_main(convert_main, ["export", imported, exported, "--dtype", "float16"], capsys)
    assert result.returncode == 0 and "reproduces megallm's logits" in result.stdout, result.stderr
    assert json.loads((exported / "config.json").read_text()) == original  # no head_dim, rope_theta, ... added


def test_a_tied_model_with_another_head_is_refused_naming_the_cause(tmp_path, capsys):
    folder = save_family("llama3", tmp_path / "hf")
    weights = load_file(str(folder / "model.safetensors"))
    assert "lm_head.weight" not in weights  # tie_word_embeddings: true
    embedding = weights["model.embed_tokens.weight"]

    save_file({**weights, "lm_head.weight": embedding.clone()}, str(folder / "model.safetensors"))
    assert run_main(convert_main, ["import", folder, tmp_path / "same", "--weights-only"], capsys).returncode == 0

    save_file({**weights, "lm_head.weight": embedding * 1.5}, str(folder / "model.safetensors"))
    out = tmp_path / "other"
    line = assert_one_line_error(run_main(convert_main, ["import", folder, out, "--weights-only"], capsys),
                                 "tie_word_embeddings true", "lm_head.weight that differs from model.embed_tokens",
                                 "set tie_word_embeddings to false", prefix="convert_ckpt: error: ")
    assert "conversion is wrong" not in line
    assert not out.exists() and not partial_path(out).exists()


@pytest.mark.parametrize("damage", ["config_json", "safetensors"])
def test_damaged_files_in_a_folder_are_one_line_errors_naming_them(tmp_path, capsys, damage):
    folder = save_family("llama2", tmp_path / "hf", layout="transformers4")
    capsys.readouterr()  # transformers' progress bars
    if damage == "config_json":
        damaged = folder / "config.json"
        damaged.write_text(damaged.read_text()[:-40])  # cut short
        phrase = "is not valid JSON"
    else:
        damaged = folder / "model.safetensors"
        damaged.write_bytes(damaged.read_bytes()[:-1000])
        phrase = "is not a readable safetensors file"
    out, text = tmp_path / "out", tmp_path / "text.txt"
    text.write_text("def read_config(path):\n    return path\n")
    commands = [("convert_ckpt", convert_main, ["import", folder, out, "--weights-only"]),
                ("convert_ckpt", convert_main, ["verify", folder]),
                ("generate", generate_main, [folder, "--prompt", "def", "--max-new-tokens", "2"]),
                ("evaluate", evaluate_main, [folder, "--perplexity", text])]
    if damage == "config_json":
        commands.append(("convert_ckpt", convert_main, ["info", folder]))
    for prog, command, argv in commands:
        assert_one_line_error(run_main(command, argv, capsys), str(damaged), phrase, prefix=f"{prog}: error: ")
    assert not out.exists()
