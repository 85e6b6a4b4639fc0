"""tools/validate_data.py: a sound corpus passes with its statistics; each kind of damage is named."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from megallm.cli.validate_data import main
from megallm.data.shards import Manifest, write_shard
from megallm.data.tokenizer import train_bpe


def test_sound_corpus_passes_with_statistics(small_corpus, capsys):
    assert main([str(small_corpus)]) == 0
    out = capsys.readouterr().out.splitlines()
    manifest = Manifest.load(small_corpus)
    for split, line in zip(("train", "val"), out):
        shards = manifest.splits[split]
        assert line.startswith(f"{split}: {len(shards)} shards, {sum(s.documents for s in shards):,} documents, "
                               f"{manifest.tokens(split):,} tokens, document length mean ")
    assert out[-1] == f"{small_corpus}: OK"


def first_train_shard(corpus: Path) -> str:
    return json.loads((corpus / "manifest.json").read_text())["splits"]["train"][0]["path"]


def replace_shard(corpus: Path, documents: list[np.ndarray]) -> str:
    """Write a new first train shard and list it in the manifest with matching counts and checksum."""
    raw = json.loads((corpus / "manifest.json").read_text())
    entry = raw["splits"]["train"][0]
    entry.update(asdict(write_shard(corpus / entry["path"], documents, first_index=0)))
    (corpus / "manifest.json").write_text(json.dumps(raw))
    return entry["path"]


def truncate(corpus: Path) -> tuple[str, str]:
    shard = corpus / first_train_shard(corpus)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard.name, "is unreadable after"


def token_beyond_vocab(corpus: Path) -> tuple[str, str]:
    manifest = Manifest.load(corpus)
    doc = np.array([5, manifest.vocab_size, manifest.eos_id], dtype=manifest.dtype)
    return replace_shard(corpus, [doc]), f"holds token id {manifest.vocab_size} >= vocab size {manifest.vocab_size}"


def missing_end_of_document(corpus: Path) -> tuple[str, str]:
    manifest = Manifest.load(corpus)
    return replace_shard(corpus, [np.array([5, 6, 7], dtype=manifest.dtype)]), "does not end with"


def checksum_mismatch(corpus: Path) -> tuple[str, str]:
    raw = json.loads((corpus / "manifest.json").read_text())
    raw["splits"]["train"][0]["sha256"] = "0" * 64
    (corpus / "manifest.json").write_text(json.dumps(raw))
    return raw["splits"]["train"][0]["path"], "the manifest says 000000000000"


def wrong_document_count(corpus: Path) -> tuple[str, str]:
    raw = json.loads((corpus / "manifest.json").read_text())
    raw["splits"]["train"][0]["documents"] += 1
    (corpus / "manifest.json").write_text(json.dumps(raw))
    return raw["splits"]["train"][0]["path"], "documents"


def missing_shard(corpus: Path) -> tuple[str, str]:
    (corpus / first_train_shard(corpus)).unlink()
    return first_train_shard(corpus), "is missing"


def other_tokenizer(corpus: Path) -> tuple[str, str]:
    train_bpe(["a different little corpus " * 20], vocab_size=260).save(str(corpus / "tokenizer.json"))
    return "tokenizer.json", "the manifest says"


@pytest.mark.parametrize("damage", [truncate, token_beyond_vocab, missing_end_of_document, checksum_mismatch,
                                    wrong_document_count, missing_shard, other_tokenizer])
def test_damage_is_reported_naming_the_shard(damage, small_corpus, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(small_corpus, corpus)
    where, phrase = damage(corpus)
    assert main([str(corpus)]) == 1
    problems = capsys.readouterr().err.splitlines()[:-1]  # the last line counts them
    assert any(where in line and phrase in line for line in problems), problems
    # The manifest's other shards are sound: every problem names the damaged file.
    assert all(where in line for line in problems), problems
