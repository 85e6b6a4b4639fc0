"""Opening a prepared corpus for a run: manifest, shard presence, tokenizer and vocabulary checks.

All checks here are cheap file reads, done before any process group starts, so a wrong
`data.path` or tokenizer fails in a second with a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megallm.data.shards import DataError, Manifest
from megallm.data.tokenizer import load_tokenizer, tokenizer_hash


@dataclass
class Corpus:
    folder: Path
    manifest: Manifest


def open_corpus(path: str, tokenizer: str | None, splits: tuple[str, ...]) -> Corpus:
    folder = Path(path)
    manifest = Manifest.load(folder)
    for split in splits:
        shards = manifest.splits.get(split) or []
        if not shards:
            raise DataError(f"corpus {folder} has no {split!r} shards (it has {sorted(manifest.splits)}); "
                            "re-run tools/prepare_data.py or fix data.train_split / data.val_split")
        missing = [s.path for s in shards if not (folder / s.path).is_file()]
        if missing:
            raise DataError(f"corpus {folder} lacks {len(missing)} shard(s) its manifest lists, e.g. {missing[0]}; "
                            "re-run tools/prepare_data.py")
    if tokenizer:
        tok = load_tokenizer(tokenizer)
        if tokenizer_hash(tok) != manifest.tokenizer_sha256 or tok.get_vocab_size() != manifest.vocab_size:
            raise DataError(
                f"tokenizer {tokenizer} (vocab {tok.get_vocab_size()}, sha256 {tokenizer_hash(tok)[:12]}) does not "
                f"match corpus {folder} (vocab {manifest.vocab_size}, sha256 {manifest.tokenizer_sha256[:12]}); "
                f"use {folder / manifest.tokenizer_file} or prepare the corpus with --tokenizer {tokenizer}"
            )
    return Corpus(folder, manifest)
