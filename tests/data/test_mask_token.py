"""The mask token of masked-language modelling for a given tokenizer (tools/prepare_data.py --tokenizer):
`--mask-token` adds one to a tokenizer that lacks it (a Llama 3-style byte-level BPE), a tokenizer that
declares one (BERT's WordPiece with "mask_token": "[MASK]") is used as it is, and a corpus with
neither is refused by launch/pretrain.py train.objective=mlm in one line naming --mask-token.

The tokenizers are built here with the `tokenizers` library (nothing downloaded): Llama-style ones
by tests/llama_families.py, the BERT one as BertWordPieceTokenizer builds it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megallm.cli.prepare_data import main as prepare_main
from megallm.cli.pretrain import main as pretrain_main
from megallm.data.shards import Manifest, read_documents
from megallm.data.tokenizer import load_tokenizer
from tests.helpers import SMALL_MODEL, assert_one_line_error, run_main, train
from tests.llama_families import TEXT, build_tokenizer

MASK = "<|mask|>"
# A document that spells the mask token out: text, not the token (the token must never be in a document).
SPELLED = f"x = '{MASK}'  # a string that looks like the mask token\n"
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_CONFIG = {"do_lower_case": True, "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
               "cls_token": "[CLS]", "mask_token": "[MASK]", "model_max_length": 512,
               "tokenizer_class": "BertTokenizerFast"}
MLM_RUN = [*SMALL_MODEL, "model.num_layers=1", "train.objective=mlm", "train.precision=fp32", "train.seq_len=32",
           "train.micro_batch_size=2", "train.global_batch_tokens=64", "train.steps=2", "train.eval_every=0",
           "checkpoint.every=0", "checkpoint.save_last=false", "logging.every=1", "data.num_workers=0"]


def save_tokenizer(folder: Path, tok, config: dict) -> Path:
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder / "tokenizer.json"


def bert_tokenizer():
    """An uncased BERT WordPiece tokenizer ([CLS] text [SEP]), as tokenizers' BertWordPieceTokenizer builds it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(TEXT, trainers.WordPieceTrainer(vocab_size=200, special_tokens=BERT_SPECIAL,
                                                            show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    return tok


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mask_inputs") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXT * 2))
    return path


def prepare(capsys, inputs: Path, tokenizer: Path, output: Path, *extra: str):
    args = ["--input", inputs, "--tokenizer", tokenizer, "--output", output, "--val-fraction", "0.1",
            "--workers", "1", *extra]
    result = run_main(prepare_main, args, capsys)
    assert result.returncode == 0, result.stderr
    return Manifest.load(output)


def documents(corpus: Path, manifest: Manifest) -> np.ndarray:
    return np.concatenate([d for split in manifest.splits.values() for s in split
                           for d in read_documents(str(corpus / s.path))])


@pytest.mark.slow
def test_mask_token_is_added_to_a_llama3_tokenizer(inputs, tmp_path, capsys):
    tok, config = build_tokenizer("llama3")
    given = save_tokenizer(tmp_path / "llama3", tok, config)
    before = given.read_text()
    assert tok.token_to_id(MASK) is None
    corpus = tmp_path / "corpus"
    manifest = prepare(capsys, inputs, given, corpus, "--mask-token", MASK)

    installed = load_tokenizer(corpus / "tokenizer.json")
    assert manifest.mask_id == installed.token_to_id(MASK) == tok.get_vocab_size()  # a new id after the others
    assert manifest.vocab_size == tok.get_vocab_size() + 1
    assert given.read_text() == before  # the given tokenizer is left as it was
    declared = json.loads((corpus / "tokenizer_config.json").read_text())
    assert declared == {**config, "mask_token": MASK}  # its own declarations kept (eos, bos, chat template)
    assert manifest.bos_id == tok.token_to_id("<|begin_of_text|>")
    assert manifest.eos_id == tok.token_to_id("<|end_of_text|>")
    tokens = documents(corpus, manifest)
    assert len(tokens) > 1000
    assert manifest.mask_id not in tokens

    run = train([*MLM_RUN, f"data.path={corpus}", f"run_dir={tmp_path / 'run'}"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "step 2/2" in run.stdout


def test_a_document_that_spells_the_mask_token_does_not_contain_it(tmp_path, capsys):
    tok, config = build_tokenizer("llama3")
    spelled = tmp_path / "spelled.jsonl"
    spelled.write_text("".join(json.dumps({"text": t}) + "\n" for t in [*TEXT[:8], SPELLED]))
    corpus = tmp_path / "corpus"
    manifest = prepare(capsys, spelled, save_tokenizer(tmp_path / "llama3", tok, config), corpus, "--mask-token", MASK)
    assert manifest.mask_id not in documents(corpus, manifest)


@pytest.mark.slow
def test_a_declared_mask_token_is_used_without_the_flag(inputs, tmp_path, capsys):
    tok = bert_tokenizer()
    given = save_tokenizer(tmp_path / "bert", tok, BERT_CONFIG)
    corpus = tmp_path / "corpus"
    manifest = prepare(capsys, inputs, given, corpus, "--eos-token", "[SEP]")  # BERT declares no eos

    assert manifest.mask_id == tok.token_to_id("[MASK]")
    assert (corpus / "tokenizer.json").read_text() == tok.to_str(pretty=True)  # nothing added
    assert json.loads((corpus / "tokenizer_config.json").read_text())["mask_token"] == "[MASK]"
    assert (manifest.bos_id, manifest.eos_id) == (tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"))
    assert manifest.mask_id not in documents(corpus, manifest)
    run = train([*MLM_RUN, f"data.path={corpus}", f"run_dir={tmp_path / 'run'}"])
    assert run.returncode == 0, run.stderr[-3000:]


def test_a_corpus_without_mask_token_is_refused_for_mlm(inputs, tmp_path, capsys):
    tok, config = build_tokenizer("llama2")
    corpus = tmp_path / "corpus"
    manifest = prepare(capsys, inputs, save_tokenizer(tmp_path / "llama2", tok, config), corpus)
    assert manifest.mask_id is None
    run_dir = tmp_path / "run"
    refused = run_main(pretrain_main, [*MLM_RUN, f"data.path={corpus}", f"run_dir={run_dir}"], capsys)
    assert_one_line_error(refused, "train.objective=mlm needs a mask token", str(corpus), "--mask-token")
    assert not run_dir.exists()
