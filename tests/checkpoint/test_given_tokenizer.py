"""A given tokenizer travels byte for byte: `tools/prepare_data.py --tokenizer` -> the corpus -> a
training run's checkpoint -> `convert_ckpt.py export`, all with the file's SHA-256.

The file is a Llama 3-style tokenizer (tests/llama_families.py) in the format Llama 3 and
transformers 4.44 ship: merges as "a b" strings, which `tokenizers` 0.19 (what transformers
4.44 and older install) reads, and the pairs that newer `tokenizers` write do not load in
("data did not match any variant of untagged enum ModelWrapper"). `--mask-token` changes the
tokenizer: then the corpus's file is the given one with the token appended to its added tokens,
every other value (the merges' format included) as given.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from megallm.cli.convert_ckpt import main as convert_main
from megallm.cli.prepare_data import main as prepare_main
from megallm.data.tokenizer import load_tokenizer
from tests.helpers import SMALL_MODEL, run_main, train
from tests.llama_families import SPECIAL, TEXT, build_tokenizer

pytest.importorskip("transformers")

RUN = [*SMALL_MODEL, "model.num_layers=1", "train.precision=fp32", "train.seq_len=32", "train.micro_batch_size=2",
       "train.global_batch_tokens=64", "train.steps=2", "train.eval_every=0", "checkpoint.every=2",
       "logging.every=1", "data.num_workers=0"]
SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def upstream_format(tok) -> str:
    """`tok`'s tokenizer.json as Llama 3's is written: indented, merges as "a b" strings."""
    data = json.loads(tok.to_str())
    data["model"]["merges"] = [f"{a} {b}" for a, b in data["model"]["merges"]]
    return json.dumps(data, indent=2, ensure_ascii=False)


@pytest.fixture
def given(tmp_path):
    """A folder holding the Llama 3-style tokenizer.json in its upstream format and its side files; the inputs."""
    tok, config = build_tokenizer("llama3")
    folder = tmp_path / "llama3"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(upstream_format(tok))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(dict(zip(("bos_token", "eos_token"),
                                                                        SPECIAL["llama3"])), indent=2))
    inputs = tmp_path / "docs.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXT * 3))
    return folder / "tokenizer.json", inputs


@pytest.mark.slow
def test_a_given_tokenizer_is_kept_byte_for_byte_through_corpus_run_and_export(given, tmp_path, capsys):
    tokenizer, inputs = given
    corpus, run_dir, exported = tmp_path / "corpus", tmp_path / "run", tmp_path / "hf"
    result = run_main(prepare_main, ["--input", inputs, "--output", corpus, "--tokenizer", tokenizer,
                                     "--val-fraction", "0.1", "--workers", "1"], capsys)
    assert result.returncode == 0, result.stderr
    checkpoint = run_dir / "checkpoints" / "step_00000002"
    run = train([*RUN, f"data.path={corpus}", f"run_dir={run_dir}"])
    assert run.returncode == 0, run.stderr[-3000:]
    result = run_main(convert_main, ["export", run_dir, exported], capsys)
    assert result.returncode == 0 and "reproduces megallm's logits" in result.stdout, result.stderr
    for folder in (corpus, checkpoint, exported):
        for name in ("tokenizer.json", *SIDE_FILES):
            assert sha256(folder / name) == sha256(tokenizer.with_name(name)), folder / name
    merges = json.loads((exported / "tokenizer.json").read_text())["model"]["merges"]
    assert all(isinstance(merge, str) for merge in merges)  # what tokenizers 0.19 reads


def test_mask_token_appends_to_the_given_file_and_keeps_the_rest(given, tmp_path, capsys):
    tokenizer, inputs = given
    corpus = tmp_path / "corpus"
    result = run_main(prepare_main, ["--input", inputs, "--output", corpus, "--tokenizer", tokenizer,
                                     "--mask-token", "<|mask|>", "--val-fraction", "0.1", "--workers", "1"], capsys)
    assert result.returncode == 0, result.stderr
    mask_id = load_tokenizer(corpus / "tokenizer.json").token_to_id("<|mask|>")
    assert mask_id == load_tokenizer(tokenizer).get_vocab_size()
    assert f"added the mask token '<|mask|>' to the tokenizer (id {mask_id})" in result.stdout
    original, written = json.loads(tokenizer.read_text()), json.loads((corpus / "tokenizer.json").read_text())
    *kept, added = written["added_tokens"]
    assert kept == original["added_tokens"] and (added["id"], added["content"], added["special"]) == (
        mask_id, "<|mask|>", True)
    assert {**written, "added_tokens": kept} == original  # merges as "a b" strings still
    assert (corpus / "tokenizer.json").read_text().count("\n") == tokenizer.read_text().count("\n") + 9  # indented
