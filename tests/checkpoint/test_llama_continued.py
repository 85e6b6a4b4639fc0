"""Continued pretraining of imported Llama families (tests/llama_families.py), as the README walks
through it: import -> corpus prepared with the model's tokenizer -> train -> export -> generate.

- The first step's loss of a run resuming the import (weights-only on 1 rank; a TP=2 import
  on 2 gloo ranks) equals transformers' loss on the same batch, which transformers computes
  document by document (each `<|begin_of_text|> ... <|end_of_text|>` run alone, as document
  masking claims to), at 128 tokens, past the llama3 family's original context of 32.
- The export of the trained run keeps the original's special token ids, max_position_embeddings,
  RoPE scaling and chat template, and verifies in transformers.
- tools/generate.py on the export, fed as the model's documents begin (bos + prompt), prints
  transformers' greedy `generate` tokens.
"""

from __future__ import annotations

import json

import pytest
import torch

from megallm.cli.convert_ckpt import main as convert_main
from megallm.cli.generate import main as generate_main
from megallm.cli.prepare_data import main as prepare_main
from tests.helpers import records, run_main, short_stdlib_modules, train
from tests.llama_families import MODEL, save_family

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

SCHEDULE = ["train.precision=fp32", "train.seq_len=128", "train.micro_batch_size=4", "train.global_batch_tokens=512",
            "train.steps=2", "optim.lr=1e-3", "optim.warmup_steps=1", "logging.every=1", "train.eval_every=0",
            "checkpoint.every=2", "data.streams=4", "data.num_workers=0"]
CASES = {"llama3": "transformers5", "llama2": "transformers4"}


@pytest.fixture(scope="module", params=list(CASES))
def imported(request, tmp_path_factory):
    """(family, HF folder, weights-only import, corpus prepared with its tokenizer, model overrides)."""
    from megallm.checkpoint.convert import describe, import_hf

    family = request.param
    root = tmp_path_factory.mktemp(family)
    folder = save_family(family, root / "hf", CASES[family])
    checkpoint = import_hf(folder, root / "imported", layout=None)
    corpus = root / "corpus"
    code = prepare_main(["--tokenizer", str(folder / "tokenizer.json"), "--output", str(corpus), "--workers", "1",
                         "--val-fraction", "0.05", *sum((["--input", str(p)] for p in short_stdlib_modules()), [])])
    assert code == 0
    overrides = describe(checkpoint).split(": ", 1)[1].split()  # `convert_ckpt.py info`: what a resume needs
    assert any(o.startswith("model.rope_scaling.rope_type=") for o in overrides)
    return family, folder, checkpoint, corpus, ["+model=tiny", *overrides]


def transformers_first_step_loss(folder, corpus, overrides) -> float:
    """transformers' mean next-token loss on the run's first batch, each document of a window alone."""
    from megallm.config import compose_config
    from megallm.data.corpus import open_corpus
    from megallm.data.loader import TrainBatches

    cfg, _ = compose_config(overrides)
    data = open_corpus(str(corpus), None, ("train",))
    batches = TrainBatches(data, "train", seq_len=cfg.train.seq_len, micro_batch_size=cfg.train.micro_batch_size,
                           streams=cfg.data.streams, seed=cfg.train.seed, dp_rank=0, dp=1, consumed_samples=0,
                           num_workers=0, prefetch=cfg.data.prefetch, skip_bad_shards=False, device=torch.device("cpu"))
    window = batches.next_micro_batch()  # [mbs, seq_len + 1]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    total, starts = torch.zeros((), dtype=torch.float64), 0
    for row in window:
        tokens, labels = row[:-1], row[1:]
        doc = torch.cumsum(tokens == data.manifest.bos_id, 0)
        starts += int((tokens == data.manifest.bos_id).sum())
        for d in doc.unique():
            part = doc == d
            with torch.no_grad():
                logits = model(tokens[part][None]).logits[0]
            total += torch.nn.functional.cross_entropy(logits, labels[part], reduction="sum").double()
    assert starts >= 2  # documents begin inside the windows: masking and bos at work
    return (total / window[:, 1:].numel()).item()


def test_continued_pretraining_export_and_generation(imported, tmp_path, capsys):
    family, folder, checkpoint, corpus, overrides = imported
    run_dir = tmp_path / "run"
    args = [*overrides, *SCHEDULE, f"data.path={corpus}", f"train.resume={checkpoint}", f"run_dir={run_dir}"]
    result = train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = transformers_first_step_loss(folder, corpus, args)
    assert records(run_dir, "train")[1]["loss"] == pytest.approx(expected, rel=1e-5)

    exported = tmp_path / "exported"
    result = run_main(convert_main, ["export", run_dir, exported], capsys)
    assert result.returncode == 0 and "reproduces megallm's logits" in result.stdout, result.stderr
    original, config = (json.loads((f / "config.json").read_text()) for f in (folder, exported))
    for key in ("bos_token_id", "eos_token_id", "max_position_embeddings", "rope_theta", "rope_scaling",
                "rope_parameters", "tie_word_embeddings"):
        assert config.get(key) == original.get(key), key
    assert config["max_position_embeddings"] == MODEL[family]["max_position_embeddings"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
    assert hf_tok.chat_template == transformers.AutoTokenizer.from_pretrained(folder).chat_template

    prompt, new = "def read_config(path):", 48  # prompt + new tokens past the original context of 32
    result = run_main(generate_main, [exported, "--prompt", prompt, "--max-new-tokens", new, "--json"], capsys)
    assert result.returncode == 0, result.stderr
    printed = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][0])
    fed = hf_tok(prompt)["input_ids"]  # the tokenizer's post-processor puts bos in front
    assert printed["prompt_ids"] == fed and fed[0] == hf_tok.bos_token_id
    model = transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([fed]), do_sample=False, max_new_tokens=new)[0, len(fed):].tolist()
    eos = hf_tok.eos_token_id
    assert printed["new_ids"] == (out[: out.index(eos) + 1] if eos in out else out)


@pytest.mark.parametrize("imported", ["llama3"], indirect=True)  # GQA, tied, scaled RoPE
def test_tp2_import_continues_with_transformers_loss(imported, tmp_path, capsys):
    _, folder, _, corpus, overrides = imported
    checkpoint = tmp_path / "imported_tp2"
    result = run_main(convert_main, ["import", folder, checkpoint, "--tp", 2, "--pp", 1, "--dp", 1,
                                     "--zero-stage", 1], capsys)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "run_tp2"
    args = [*overrides, *SCHEDULE, "parallel.tp=2", "parallel.zero_stage=1", f"data.path={corpus}",
            f"train.resume={checkpoint}", f"run_dir={run_dir}"]
    result = train(args, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = transformers_first_step_loss(folder, corpus, args)
    assert records(run_dir, "train")[1]["loss"] == pytest.approx(expected, rel=1e-5)
