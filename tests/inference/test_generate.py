"""Generation with the KV cache: the tokens of transformers' `generate` on the exported model,
the logits of the full (training) forward at every step, and the sampling filters."""

from __future__ import annotations

import json

import pytest
import torch

from megallm.checkpoint.hf import read_hf_folder, write_hf_folder
from megallm.cli.generate import main as cli_main
from megallm.errors import ConversionError
from megallm.inference.generate import CachedBatch, generate
from megallm.inference.sampling import Sampling, next_tokens
from megallm.model.config import ModelConfig
from megallm.model.weights import model_from_weights
from tests.helpers import canonical_weights, random_model, run_tool, tiny_tokenizer

transformers = pytest.importorskip("transformers")

# vocab 300 is padded to 384 rows by megallm; GQA with 2 query heads per key/value head.
CFG = ModelConfig(name="gen", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_hidden_size=96,
                  vocab_size=300, rope_theta=500.0, norm_eps=1e-6, tie_embeddings=False)
PAD = 0
NEW = 12


@pytest.fixture(scope="module")
def exported(world_of_one, tmp_path_factory):
    """(Hugging Face folder, eos id) of a small random model whose norms are not all ones."""
    tmp = tmp_path_factory.mktemp("gen")
    tok = tiny_tokenizer(tmp / "tokenizer.json")
    model = random_model(CFG, seed=5)
    folder = write_hf_folder(canonical_weights(model, CFG), CFG, tmp / "hf", tokenizer_file=tmp / "tokenizer.json",
                             max_positions=256)
    return folder, tok.token_to_id("<|endoftext|>")


@pytest.fixture(scope="module")
def model(exported):
    weights, cfg = read_hf_folder(exported[0])
    return model_from_weights(weights, cfg, "cpu")


@pytest.fixture(scope="module")
def hf_model(exported):
    return transformers.AutoModelForCausalLM.from_pretrained(exported[0], dtype=torch.float32).eval()


def prompts(eos: int) -> list[list[int]]:
    """Three prompts of different lengths, each [eos] + tokens as megallm feeds them."""
    generator = torch.Generator().manual_seed(1)
    return [[eos] + torch.randint(1, CFG.vocab_size, (n,), generator=generator).tolist() for n in (4, 13, 8)]


def hf_greedy(hf_model, prompts: list[list[int]], new: int, eos: int) -> list[list[int]]:
    """transformers' generate on the left-padded batch; each row's new tokens up to its first eos."""
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf_model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new, pad_token_id=PAD)
    rows = [row[width:].tolist() for row in out]
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


def test_greedy_tokens_equal_transformers_generate(model, hf_model, exported):
    _, eos = exported
    ours = generate(model, prompts(eos), NEW, eos_id=eos)
    theirs = hf_greedy(hf_model, prompts(eos), NEW, eos)
    assert ours == theirs
    assert all(len(row) == NEW for row in ours)  # no row stopped: every step was compared


def test_row_stops_at_eos_alone(model):
    full = generate(model, prompts(1), NEW)  # no eos id: every row runs to the end
    stop = full[1][4]  # a token row 1 generates mid-way
    stopped = generate(model, prompts(1), NEW, eos_id=stop)
    assert stopped == [row[: row.index(stop) + 1] if stop in row else row for row in full]
    assert len(stopped[1]) <= 5


def test_cached_logits_equal_full_forward_every_step(model, exported):
    rows = [list(p) for p in prompts(exported[1])]
    with torch.inference_mode():
        batch = CachedBatch(model, rows, NEW)
        # Rotary scores depend on position differences only, so logits cannot tell positions shifted
        # by the padding: each row's real tokens must count from 0, as transformers' cumsum(mask) - 1.
        for r, row in enumerate(rows):
            assert batch.positions[r][batch.real[r]].tolist() == list(range(len(row) + NEW))
        logits = batch.prefill()
        for step in range(NEW):
            for r, row in enumerate(rows):  # each row alone, unpadded, through the training forward
                full = model(torch.tensor([row]))[-1, 0, : CFG.vocab_size]
                assert (logits[r] - full).abs().max().item() < 1e-5, (step, r)
            token = logits.argmax(-1)
            for row, t in zip(rows, token.tolist()):
                row.append(t)
            if step < NEW - 1:
                logits = batch.extend(token)
    assert full.abs().max().item() > 0.1  # logits that can disagree


def test_sampling_filters_and_seed(model):
    rows = prompts(1)
    greedy = generate(model, rows, NEW)
    assert generate(model, rows, NEW, temperature=1.0, top_k=1, seed=3) == greedy
    assert generate(model, rows, NEW, temperature=1.0, top_p=1e-6, seed=3) == greedy
    sampled = generate(model, rows, NEW, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    assert generate(model, rows, NEW, temperature=1.0, top_k=50, top_p=0.9, seed=7) == sampled
    assert generate(model, rows, NEW, temperature=1.0, seed=8) != sampled != greedy


def test_nucleus_keeps_smallest_set_reaching_top_p():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])  # sorted: 0.5, 0.3 (0.8 >= top_p), then dropped
    logits = probs.log().expand(2000, 4)
    generator = torch.Generator().manual_seed(0)
    drawn = next_tokens(logits, Sampling(temperature=1.0, top_p=0.8), generator)
    assert set(drawn.tolist()) == {1, 3}
    drawn = next_tokens(logits, Sampling(temperature=1.0, top_k=3), generator)
    assert set(drawn.tolist()) == {0, 1, 3}
    with pytest.raises(ValueError, match="top_p"):
        Sampling(temperature=1.0, top_p=0.0)


def test_weights_missing_or_misshaped_are_named(exported):
    weights, cfg = read_hf_folder(exported[0])
    with pytest.raises(ConversionError, match="lack blocks.1.mlp.down.weight"):
        model_from_weights({k: v for k, v in weights.items() if k != "blocks.1.mlp.down.weight"}, cfg)
    with pytest.raises(ConversionError, match=r"blocks.0.attn.qkv.weight has shape \(64, 64\)"):
        model_from_weights({**weights, "blocks.0.attn.qkv.weight": torch.zeros(64, 64)}, cfg)
    model = model_from_weights(weights, cfg, dtype=torch.bfloat16)
    assert model.output.weight.dtype == torch.bfloat16 and not model.output.weight[CFG.vocab_size:].any()
    assert len(generate(model, [[1, 2, 3]], 4)[0]) == 4


@pytest.mark.slow
def test_tool_prints_transformers_tokens(exported, hf_model):
    folder, eos = exported
    prompt = "def export(model"
    result = run_tool("generate", folder, "--prompt", prompt, "--max-new-tokens", NEW, "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]  # a library may print too
    assert len(lines) == 1, result.stdout
    printed = json.loads(lines[0])
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    fed = [eos] + hf_tok(prompt)["input_ids"]
    theirs = hf_greedy(hf_model, [fed], NEW, eos)[0]
    assert (printed["prompt_ids"], printed["new_ids"]) == (fed, theirs), result.stderr
    assert printed["completion"] == hf_tok.decode(theirs, skip_special_tokens=True)
    assert "tokens/s" in result.stderr


def test_tool_source_neither_kind(tmp_path, capsys):
    assert cli_main([str(tmp_path), "--prompt", "x"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("generate: error: ") and str(tmp_path) in lines[0]
