"""Real Llama families in and out of megallm (tests/llama_families.py builds them locally):
Llama 3.2-style (llama3 RoPE scaling, tied, GQA, <|begin_of_text|> prepended) and Llama
2-style (<s> / </s>, untied), each saved in the transformers 5 and the transformers 4
config.json layout.

- import gives transformers' logits at 160 tokens, where the llama3 scaling moves them
  (original context 32), bit for bit here;
- export of the import gives back the same config.json, tensors, tokenizer files and
  generation config;
- a corpus prepared with the model's tokenizer holds `bos ... eos` documents, as the
  tokenizer encodes them;
- every unsupported setting and a tokenizer without an end-of-document token are
  one-line errors that write nothing.
The slow part (continued pretraining, TP=2, generation) is in test_llama_continued.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from megallm.cli.convert_ckpt import main as convert_main
from megallm.cli.prepare_data import main as prepare_main
from megallm.files import partial_path
from tests.helpers import assert_one_line_error, run_main
from tests.llama_families import FAMILIES, LAYOUTS, MODEL, SPECIAL, TEXT, save_family

transformers = pytest.importorskip("transformers")

LENGTH = 160  # positions well past original_max_position_embeddings (32) of the llama3 family
CASES = [(family, layout) for family in FAMILIES for layout in LAYOUTS]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("families")
    return {case: save_family(case[0], root / "_".join(case), case[1]) for case in CASES}


def transformers_logits(folder, tokens: torch.Tensor, drop_scaling: bool = False) -> torch.Tensor:
    config = transformers.AutoConfig.from_pretrained(folder)
    if drop_scaling:
        config.rope_parameters = {"rope_type": "default", "rope_theta": config.rope_parameters["rope_theta"]}
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_import_gives_transformers_logits_and_exports_the_same_folder(world_of_one, folders, tmp_path, capsys, case):
    from megallm.checkpoint.convert import read_model
    from megallm.model.weights import model_from_weights

    family, layout = case
    folder = folders[case]
    imported = tmp_path / "imported"
    result = run_main(convert_main, ["import", folder, imported, "--weights-only"], capsys)
    assert result.returncode == 0, result.stderr
    assert "transformers computes megallm's logits" in result.stderr  # import's own check ran

    weights, cfg, tokenizer = read_model(imported)
    scaling = MODEL[family]["rope_parameters"]
    assert cfg.rope_theta == scaling["rope_theta"] and cfg.max_position_embeddings == MODEL[family]["max_position_embeddings"]
    if family == "llama3":
        assert cfg.rope_scaling.to_dict() == {k: v for k, v in scaling.items() if k != "rope_theta"}
    else:
        assert cfg.rope_scaling.rope_type == "default"
    tokens = torch.randint(0, cfg.vocab_size, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model_from_weights(weights, cfg)(tokens).transpose(0, 1)[..., : cfg.vocab_size]
    theirs = transformers_logits(folder, tokens)
    assert (ours - theirs).abs().max().item() < 1e-4
    if family == "llama3":  # the scaling matters at this length: without it transformers is far off
        assert (transformers_logits(folder, tokens, drop_scaling=True) - theirs).abs().max().item() > 0.1

    exported = tmp_path / "exported"
    result = run_main(convert_main, ["export", imported, exported], capsys)
    assert result.returncode == 0 and "reproduces megallm's logits" in result.stdout, result.stderr
    for name in ("config.json", "generation_config.json"):
        assert json.loads((exported / name).read_text()) == json.loads((folder / name).read_text()), name
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (exported / name).read_bytes() == (folder / name).read_bytes(), name
    original = load_file(str(folder / "model.safetensors"))
    back = {}
    for file in exported.glob("*.safetensors"):
        back.update(load_file(str(file)))
    # bitwise: import and export copy and permute the tensors, no arithmetic
    assert sorted(back) == sorted(original) and all(torch.equal(back[k], original[k]) for k in original)
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
    assert (hf_tok.bos_token, hf_tok.eos_token) == SPECIAL[family]
    assert hf_tok("def f(): pass")["input_ids"][0] == hf_tok.bos_token_id


def test_corpus_documents_are_framed_as_the_tokenizer_frames_them(folders, tmp_path, capsys):
    from megallm.data.shards import Manifest, read_documents
    from megallm.data.validate import validate

    folder = folders[("llama3", "transformers5")]
    inputs = tmp_path / "docs.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXT[:4]))
    corpus = tmp_path / "corpus"
    result = run_main(prepare_main, ["--input", inputs, "--output", corpus, "--tokenizer", folder / "tokenizer.json",
                                     "--val-fraction", "0", "--workers", "1"], capsys)
    assert result.returncode == 0, result.stderr
    manifest = Manifest.load(corpus)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert (manifest.bos_id, manifest.eos_id) == (hf_tok.bos_token_id, hf_tok.eos_token_id)
    assert manifest.segment_start_id == hf_tok.bos_token_id
    documents = sorted((d for s in manifest.splits["train"] for d in read_documents(str(corpus / s.path))), key=len)
    expected = sorted((hf_tok(t)["input_ids"] + [hf_tok.eos_token_id] for t in TEXT[:4]), key=len)
    assert [d.tolist() for d in documents] == expected  # <|begin_of_text|> text <|end_of_text|>
    assert (corpus / "tokenizer_config.json").read_bytes() == (folder / "tokenizer_config.json").read_bytes()
    assert validate(corpus)[1] == []


def test_tokenizer_without_eos_is_refused_unless_named(folders, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(folders[("llama3", "transformers5")] / "tokenizer.json", bare)  # no tokenizer_config.json
    inputs = tmp_path / "doc.txt"
    inputs.write_text(TEXT[0])
    args = ["--input", inputs, "--tokenizer", bare / "tokenizer.json", "--val-fraction", "0", "--workers", "1"]
    assert_one_line_error(run_main(prepare_main, [*args, "--output", tmp_path / "c1"], capsys),
                          "declares no end-of-document token", "--eos-token", prefix="prepare_data: error: ")
    assert not (tmp_path / "c1").exists()
    assert_one_line_error(run_main(prepare_main, [*args, "--output", tmp_path / "c2", "--eos-token", "<eos>"], capsys),
                          "'<eos>' is not in tokenizer", prefix="prepare_data: error: ")
    assert not (tmp_path / "c2").exists()
    assert run_main(prepare_main, [*args, "--output", tmp_path / "c3", "--eos-token", "<|end_of_text|>"],
                    capsys).returncode == 0
    assert json.loads((tmp_path / "c3" / "tokenizer_config.json").read_text()) == {"eos_token": "<|end_of_text|>"}


def _edited(folder, tmp_path, name, edit):
    """A copy of `folder` whose config.json went through `edit(config)`."""
    import shutil

    copy = tmp_path / name
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


REFUSED = {  # (layout, edit, phrases in the one-line error)
    "attention_bias": ("transformers5", lambda c: c.update(attention_bias=True), ["attention_bias=true"]),
    "biases_and_gelu": ("transformers4", lambda c: c.update(mlp_bias=True, hidden_act="gelu"),
                        ["mlp_bias=true", "hidden_act='gelu'"]),
    "head_dim": ("transformers5", lambda c: c.update(head_dim=32), ["head_dim=32"]),
    "sliding_window": ("transformers4", lambda c: c.update(sliding_window=64), ["sliding_window=64"]),
    "partial_rotary": ("transformers5", lambda c: c["rope_parameters"].update(partial_rotary_factor=0.5),
                       ["partial_rotary_factor=0.5"]),
    "yarn_t5": ("transformers5", lambda c: c["rope_parameters"].update(rope_type="yarn"),
                ["rope_parameters.rope_type='yarn'"]),
    "dynamic_t4": ("transformers4", lambda c: c["rope_scaling"].update(rope_type="dynamic"),
                   ["rope_scaling.rope_type='dynamic'"]),
    "llama3_without_factors": ("transformers4", lambda c: c["rope_scaling"].pop("low_freq_factor"),
                               ["lacks low_freq_factor"]),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsupported_configs_are_one_line_errors_that_write_nothing(folders, tmp_path, capsys, name):
    layout, edit, phrases = REFUSED[name]
    folder = _edited(folders[("llama3", layout)], tmp_path, name, edit)
    out = tmp_path / "out"
    assert_one_line_error(run_main(convert_main, ["import", folder, out, "--weights-only"], capsys), *phrases,
                          prefix="convert_ckpt: error: ")
    assert not out.exists() and not partial_path(out).exists()


def test_rope_frequencies_are_transformers_bits():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from megallm.model.config import RopeScaling
    from megallm.model.layers import rotary_frequencies

    for scaling in (RopeScaling("llama3", 32.0, 1.0, 4.0, 8192), RopeScaling("llama3", 8.0, 1.0, 4.0, 8192),
                    RopeScaling("linear", 4.0)):
        config = transformers.LlamaConfig(hidden_size=2048, num_attention_heads=32, max_position_embeddings=131072,
                                          rope_parameters={"rope_theta": 500000.0, **scaling.to_dict()})
        theirs, _ = ROPE_INIT_FUNCTIONS[scaling.rope_type](config, "cpu")
        # bitwise on any CPU: the same torch operations on the same [32] tensors in the same order, in this process
        assert torch.equal(rotary_frequencies(64, 500000.0, scaling), theirs)
    assert np.isclose(rotary_frequencies(64, 500000.0)[0].item(), 1.0)
