"""tools/prepare_data.py output: manifest, shards, determinism; the loader's sample order."""

from __future__ import annotations

import json

import numpy as np
import torch

from megallm.data.loader import DistributedBatches, PackedSequences, SampleOrder
from megallm.data.prepare import prepare
from megallm.data.shards import Manifest, file_sha256, read_documents
from megallm.data.tokenizer import load_tokenizer, tokenizer_hash
from tests.conftest import stdlib_subset


def test_manifest_describes_the_shards(small_corpus):
    manifest = Manifest.load(small_corpus)
    tok = load_tokenizer(small_corpus / "tokenizer.json")
    assert manifest.vocab_size == tok.get_vocab_size() == 512
    assert manifest.tokenizer_sha256 == tokenizer_hash(tok)
    assert manifest.splits["train"] and manifest.splits["val"]
    for split, shards in manifest.splits.items():
        for shard in shards:
            docs = list(read_documents(small_corpus, shard, manifest.vocab_size))
            assert len(docs) == shard.documents
            assert sum(len(d) for d in docs) == shard.tokens
            assert all(d[-1] == manifest.eos_id for d in docs)
            assert file_sha256(small_corpus / shard.path) == shard.sha256
    # Decoding a document gives back source text.
    doc = next(read_documents(small_corpus, manifest.splits["train"][0], manifest.vocab_size))
    assert "import" in tok.decode(doc[:-1].tolist())


def test_same_input_gives_identical_shards(small_corpus, tmp_path):
    again = tmp_path / "again"
    prepare(stdlib_subset(), again, vocab_size=512, tokenizer_path=None, val_fraction=0.05,
            shard_tokens=50_000, tokenizer_train_bytes=1 << 20, log=lambda *_: None)
    assert json.loads((again / "manifest.json").read_text()) == json.loads((small_corpus / "manifest.json").read_text())
    for path in small_corpus.glob("*.tar"):
        assert (again / path.name).read_bytes() == path.read_bytes()


def test_samples_are_split_across_ranks_without_overlap(small_corpus):
    manifest = Manifest.load(small_corpus)
    seqs = PackedSequences(small_corpus, manifest, "train", seq_len=32)
    order = SampleOrder(len(seqs), seed=3)
    dp, mbs, grad_accum = 2, 3, 2
    ranks = [DistributedBatches(seqs, order, mbs, r, dp, torch.device("cpu")) for r in range(dp)]
    rows = []
    for consumed in (0, dp * mbs * grad_accum):
        for r in ranks:
            for micro in range(grad_accum):
                batch = r.micro_batch(consumed, micro)
                assert batch.shape == (mbs, 33) and batch.dtype == torch.int64
                rows.extend(tuple(row.tolist()) for row in batch)
    expected = {tuple(seqs.window(order(g)).tolist()) for g in range(2 * dp * mbs * grad_accum)}
    assert len(rows) == len(set(rows)) == len(expected) and set(rows) == expected


def test_each_epoch_has_its_own_order():
    order = SampleOrder(100, seed=1)
    epoch0 = [order(i) for i in range(100)]
    epoch1 = [order(100 + i) for i in range(100)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(100))
    assert epoch0 != epoch1
    assert epoch0 == [SampleOrder(100, seed=1)(i) for i in range(100)]
    assert epoch0 != [SampleOrder(100, seed=2)(i) for i in range(100)]


def test_windows_shift_labels_by_one(small_corpus):
    manifest = Manifest.load(small_corpus)
    seqs = PackedSequences(small_corpus, manifest, "val", seq_len=16)
    first, second = seqs.window(0), seqs.window(1)
    assert len(first) == 17 and first[-1] == second[0]
    assert np.array_equal(seqs.tokens[:17], first)
