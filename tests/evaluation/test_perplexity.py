"""Perplexity of the tiny trained model (tests/evaluation/test_model.py) on its corpus's held-out split
and on JSON-lines / text files, against the same windows scored by transformers' LlamaForCausalLM on
the exported folder; and the formulas that turn one total into the reported numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from megallm.data.shards import Manifest, read_documents
from megallm.errors import DataError, UsageError
from megallm.evaluation.model import EvalModel
from megallm.evaluation.perplexity import Perplexity, perplexity

transformers = pytest.importorskip("transformers")

SEQ = 32  # tokens predicted per window: documents span several
CAP = 1200  # tokens of the val split scored (of ~2,300): enough windows, little time


@pytest.fixture(scope="module")
def model(world_of_one, trained):
    with EvalModel.load(trained.checkpoint.parent.parent, batch_size=4) as loaded:  # the run folder: its newest
        yield loaded


@pytest.fixture(scope="module")
def hf_model(trained):
    return transformers.AutoModelForCausalLM.from_pretrained(trained.hf, dtype=torch.float32).eval()


def reference_nll(hf_model, streams: list[list[int]], seq: int) -> tuple[float, int]:
    """(total NLL, predicted tokens): each stream's tokens after the first, in windows of `seq` predictions;
    a window feeds the `seq` tokens before each of its targets (the last window, fewer targets, too)."""
    total, count = 0.0, 0
    for stream in streams:
        for first in range(1, len(stream), seq):
            end = min(first + seq, len(stream))  # targets stream[first:end]
            begin = max(0, end - 1 - seq)
            with torch.no_grad():
                logits = hf_model(torch.tensor([stream[begin:end - 1]])).logits[0].double()
            logprobs = logits.log_softmax(-1).gather(-1, torch.tensor(stream[begin + 1:end])[:, None])[:, 0]
            total -= logprobs[-(end - first):].sum().item()
            count += end - first
    return total, count


def val_documents(corpus, cap: int) -> list[list[int]]:
    """The val split's documents in manifest order, up to `cap` tokens (the last one cut)."""
    manifest, docs, total = Manifest.load(corpus), [], 0
    for doc in (d.tolist() for info in manifest.splits["val"] for d in read_documents(str(corpus / info.path))):
        docs.append(doc[:cap - total])
        total += len(docs[-1])
        if total == cap:
            return docs
    raise AssertionError(f"the val split has fewer than {cap} tokens")


@pytest.mark.parametrize("mode", ["joined", "separate"])
def test_corpus_split_equals_transformers(model, hf_model, trained, mode):
    docs = val_documents(trained.corpus, CAP)
    assert len(docs) > 3 and all(d[-1] == model.special.eos_id for d in docs[:-1])
    result = perplexity(model, [trained.corpus], split="val", mode=mode, seq_len=SEQ, max_tokens=CAP)
    start = [model.special.document_start_id]  # megallm's tokenizer has no bos: streams begin after an eos
    streams = [start + [t for d in docs for t in d]] if mode == "joined" else [start + d for d in docs]
    nll, tokens = reference_nll(hf_model, streams, SEQ)
    assert (result.documents, result.tokens) == (len(docs), CAP)
    assert tokens == result.tokens
    assert result.nll == pytest.approx(nll, rel=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(trained.hf)
    assert result.bytes == sum(len(hf_tok.decode(d, skip_special_tokens=True).encode()) for d in docs)
    assert 1.0 < result.perplexity < 300  # trained: well below the uniform 300


def test_files_are_tokenized_as_prepare_does(model, hf_model, trained, tmp_path):
    texts = ["import os\n\ndef main():\n    return os.getcwd()\n", "Plain English, caf\u00e9 and na\u00efve.",
             "class Parser(object):\n    pass\n"]
    jsonl = tmp_path / "held_out.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts[:2]))
    (tmp_path / "third.txt").write_text(texts[2])
    result = perplexity(model, [jsonl, tmp_path / "third.txt"], mode="separate", seq_len=SEQ, text_field="body")
    start, eos = model.special.document_start_id, model.special.eos_id
    streams = [[start] + model.encode(t) + [eos] for t in texts]
    nll, tokens = reference_nll(hf_model, streams, SEQ)
    assert (result.documents, result.tokens, result.bytes) == (3, tokens, sum(len(t.encode()) for t in texts))
    assert result.nll == pytest.approx(nll, rel=1e-4)

    capped = perplexity(model, [jsonl], seq_len=SEQ, max_tokens=20, text_field="body")
    assert capped.tokens == 20 and capped.documents == 1  # the first document, cut at 20 tokens


def test_reported_numbers_follow_the_formulas():
    p = Perplexity(source="x", mode="joined", seq_len=8, documents=2, tokens=100, bytes=400, nll=230.0)
    assert p.mean_nll == 2.3 and p.perplexity == pytest.approx(math.exp(2.3))
    assert p.bits_per_byte == pytest.approx(230.0 / (400 * math.log(2)))
    assert p.byte_perplexity == pytest.approx(2 ** p.bits_per_byte)
    assert set(p.as_dict()) >= {"tokens", "bytes", "nll", "mean_nll", "perplexity", "bits_per_byte", "byte_perplexity"}
    assert np.isclose(p.as_dict()["byte_perplexity"], math.exp(230.0 / 400))


def test_bad_sources_are_one_line(model, trained, tmp_path):
    with pytest.raises(UsageError, match="neither a prepared corpus folder nor a file"):
        perplexity(model, [tmp_path / "missing.txt"])
    with pytest.raises(UsageError, match="not one of joined, separate"):
        perplexity(model, [trained.corpus], mode="packed")
    with pytest.raises(DataError, match="no 'test' shards"):
        perplexity(model, [trained.corpus], split="test")
