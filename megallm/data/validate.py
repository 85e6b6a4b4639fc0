"""Checking a prepared corpus end to end: `python tools/validate_data.py CORPUS`.

Every shard the manifest lists is read in full with Python's tar reader. The checks:
- the shard exists and its sha256 matches the manifest;
- it is a readable tar of `<digits>.tokens.npy` samples, each key once;
- each document is a 1-D array of the manifest's dtype, every id < vocab_size, ending
  with eos_id (and beginning with bos_id when the manifest has one);
- the documents and tokens per shard match the manifest;
- the tokenizer file matches the manifest's hash, vocabulary and special tokens.

Each problem becomes one line naming the shard (or file). Statistics per split: shards,
documents, tokens, document length (mean, median, max) and bytes on disk.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megallm.data.shards import Manifest, ShardInfo, file_sha256
from megallm.data.tokenizer import load_tokenizer, special_tokens, tokenizer_hash
from megallm.errors import DataError

SAMPLE_NAME = re.compile(r"^(\d+)\.tokens\.npy$")


@dataclass
class SplitStats:
    shards: int = 0
    bytes: int = 0
    lengths: list[np.ndarray] = field(default_factory=list)  # document lengths in tokens, per shard

    def describe(self, split: str) -> str:
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64)
        if not lengths.size:
            return f"{split}: {self.shards} shards, no readable documents, {self.bytes / 1e6:,.1f} MB on disk"
        return (f"{split}: {self.shards} shards, {lengths.size:,} documents, {int(lengths.sum()):,} tokens, "
                f"document length mean {lengths.mean():,.0f} / median {np.median(lengths):,.0f} / "
                f"max {int(lengths.max()):,} tokens, {self.bytes / 1e6:,.1f} MB on disk")


def document_lengths(path: Path, shard: ShardInfo, manifest: Manifest) -> tuple[np.ndarray, list[str]]:
    """Lengths of a shard's readable documents, and its problems (one line each)."""
    lengths, problems, keys = [], [], set()
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                match = SAMPLE_NAME.match(member.name)
                if not match or not member.isfile():
                    problems.append(f"shard {shard.path}: unexpected tar member {member.name!r} (want KEY.tokens.npy)")
                    continue
                if match[1] in keys:
                    problems.append(f"shard {shard.path}: key {match[1]} appears twice")
                keys.add(match[1])
                content = tar.extractfile(member)
                assert content is not None  # a regular file (member.isfile() above)
                tokens = np.load(io.BytesIO(content.read()), allow_pickle=False)
                problems.extend(document_problems(shard.path, match[1], tokens, manifest))
                lengths.append(tokens.size)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        problems.append(f"shard {shard.path} is unreadable after {len(lengths)} documents (truncated or not a tar: "
                        f"{type(exc).__name__}: {exc}); re-run tools/prepare_data.py")
        return np.asarray(lengths, dtype=np.int64), problems
    counted = (len(lengths), sum(lengths))
    if counted != (shard.documents, shard.tokens):
        problems.append(f"shard {shard.path} holds {counted[0]} documents / {counted[1]} tokens, the manifest says "
                        f"{shard.documents} / {shard.tokens}")
    return np.asarray(lengths, dtype=np.int64), problems


def document_problems(shard_path: str, key: str, tokens: np.ndarray, manifest: Manifest) -> list[str]:
    where = f"shard {shard_path} document {key}"
    if tokens.ndim != 1 or tokens.dtype != np.dtype(manifest.dtype):
        return [f"{where} is a {tokens.dtype} array of shape {tokens.shape}, not 1-D {manifest.dtype}"]
    problems = []
    if tokens.size and int(tokens.max()) >= manifest.vocab_size:
        problems.append(f"{where} holds token id {int(tokens.max())} >= vocab size {manifest.vocab_size}")
    if not tokens.size or tokens[-1] != manifest.eos_id:
        problems.append(f"{where} does not end with the end-of-document token {manifest.eos_id}")
    if manifest.bos_id is not None and (not tokens.size or tokens[0] != manifest.bos_id):
        problems.append(f"{where} does not begin with the beginning-of-document token {manifest.bos_id}")
    return problems


def tokenizer_problems(folder: Path, manifest: Manifest) -> list[str]:
    path = folder / manifest.tokenizer_file
    try:
        tok = load_tokenizer(path)
    except Exception as exc:  # DataError when missing; tokenizers raises a bare Exception for a damaged file
        return [f"tokenizer {path} is unreadable: {exc}"]
    problems = []
    if tokenizer_hash(tok) != manifest.tokenizer_sha256:
        problems.append(f"tokenizer {path} has sha256 {tokenizer_hash(tok)[:12]}, the manifest says "
                        f"{manifest.tokenizer_sha256[:12]}")
    try:
        tokens = special_tokens(path, tok=tok)
        found = (tok.get_vocab_size(), tokens.eos_id, tokens.bos_id)
    except DataError as exc:
        return problems + [str(exc)]
    if found != (manifest.vocab_size, manifest.eos_id, manifest.bos_id):
        problems.append(f"tokenizer {path} has vocab {found[0]}, eos {found[1]} and bos {found[2]}, the manifest "
                        f"says {manifest.vocab_size}, {manifest.eos_id} and {manifest.bos_id}")
    return problems


def validate(folder: Path) -> tuple[dict[str, SplitStats], list[str]]:
    """Statistics per split and every problem found (an empty list: the corpus is sound)."""
    try:
        manifest = Manifest.load(folder)
    except (DataError, ValueError, KeyError, TypeError) as exc:
        return {}, [f"manifest: {exc}"]
    problems = tokenizer_problems(folder, manifest)
    stats: dict[str, SplitStats] = {}
    for split, shards in manifest.splits.items():
        stats[split] = split_stats = SplitStats(shards=len(shards))
        for shard in shards:
            path = folder / shard.path
            if not path.is_file():
                problems.append(f"shard {shard.path} is missing")
                continue
            split_stats.bytes += path.stat().st_size
            sha256 = file_sha256(path)
            if sha256 != shard.sha256:
                problems.append(f"shard {shard.path} has sha256 {sha256[:12]}, the manifest says {shard.sha256[:12]}")
            lengths, shard_problems = document_lengths(path, shard, manifest)
            split_stats.lengths.append(lengths)
            problems.extend(shard_problems)
    return stats, problems
