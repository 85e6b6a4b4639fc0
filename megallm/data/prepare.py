"""Text files -> tokenizer + WebDataset token shards + manifest (`tools/prepare_data.py`).

Each input file is one document. Documents go to the validation split by a hash of
their path (stable when files are added), are tokenized in batches by the Rust
tokenizer's thread pool, get the end-of-document token appended, and are written in
shards of about `--shard-tokens` tokens. The same inputs give byte-identical shards.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

from megallm.data.shards import DataError, Manifest, token_dtype, write_shard
from megallm.data.tokenizer import eos_id, load_tokenizer, tokenizer_hash, train_bpe


def python_stdlib_files() -> list[Path]:
    """The running interpreter's standard-library sources (a corpus every machine has)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())


def collect_inputs(patterns: list[str], use_stdlib: bool) -> list[Path]:
    files: set[Path] = set(python_stdlib_files()) if use_stdlib else set()
    for pattern in patterns:
        matches = [Path(m) for m in glob.glob(pattern, recursive=True)]
        if not matches:
            raise DataError(f"input {pattern!r} matches no file")
        files.update(m for m in matches if m.is_file())
    if not files:
        raise DataError("no input files: give --input FILE_OR_GLOB (repeatable) or --python-stdlib")
    return sorted(files)


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def is_validation(path: Path, val_fraction: float) -> bool:
    bucket = int.from_bytes(hashlib.sha1(str(path).encode()).digest()[:4], "big") / 2**32
    return bucket < val_fraction


def prepare(
    files: list[Path],
    output: Path,
    vocab_size: int,
    tokenizer_path: Path | None,
    val_fraction: float,
    shard_tokens: int,
    tokenizer_train_bytes: int,
    log=print,
) -> Manifest:
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if tokenizer_path is not None:
        tok = load_tokenizer(tokenizer_path)
    else:
        texts, budget = [], tokenizer_train_bytes
        for f in files:  # a prefix of the sorted inputs: deterministic
            if budget <= 0:
                break
            texts.append(read_text(f))
            budget -= len(texts[-1])
        log(f"training a {vocab_size}-token byte-level BPE on {len(texts)} files")
        tok = train_bpe(texts, vocab_size)
    tok.save(str(output / "tokenizer.json"))
    eos, vocab = eos_id(tok), tok.get_vocab_size()
    dtype = token_dtype(vocab)
    manifest = Manifest(vocab_size=vocab, tokenizer_sha256=tokenizer_hash(tok), eos_id=eos, dtype=dtype.name)

    splits = {"train": [f for f in files if not is_validation(f, val_fraction)],
              "val": [f for f in files if is_validation(f, val_fraction)]}
    if not splits["val"] and val_fraction > 0:  # tiny corpora: hold out at least one document
        splits["val"] = [splits["train"].pop()]
    for split, split_files in splits.items():
        shards, pending, pending_tokens, doc_index = [], [], 0, 0
        for batch_start in range(0, len(split_files), 256):
            batch = [read_text(f) for f in split_files[batch_start:batch_start + 256]]
            for enc in tok.encode_batch(batch):
                doc = np.asarray(enc.ids + [eos], dtype=dtype)
                pending.append(doc)
                pending_tokens += len(doc)
                if pending_tokens >= shard_tokens:
                    shards.append(write_shard(output / f"{split}-{len(shards):05d}.tar", pending, doc_index))
                    doc_index += len(pending)
                    pending, pending_tokens = [], 0
        if pending:
            shards.append(write_shard(output / f"{split}-{len(shards):05d}.tar", pending, doc_index))
        manifest.splits[split] = shards
        log(f"{split}: {len(split_files)} documents, {manifest.tokens(split):,} tokens in {len(shards)} shards")
    manifest.save(output)
    elapsed = time.perf_counter() - start
    total = sum(manifest.tokens(s) for s in manifest.splits)
    log(f"wrote {output}/manifest.json: {total:,} tokens in {elapsed:.1f}s ({total / elapsed:,.0f} tokens/s)")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/prepare_data.py",
        description="Tokenize text files into WebDataset token shards with a manifest, for launch/pretrain.py.",
    )
    parser.add_argument("--input", action="append", default=[], help="file or glob (** recurses); repeatable")
    parser.add_argument("--python-stdlib", action="store_true", help="add this Python's standard-library sources")
    parser.add_argument("--output", required=True, type=Path, help="corpus folder to write (data.path)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary when training a tokenizer")
    parser.add_argument("--tokenizer", type=Path, help="use this tokenizer.json instead of training one")
    parser.add_argument("--val-fraction", type=float, default=0.02, help="share of documents held out")
    parser.add_argument("--shard-tokens", type=int, default=1 << 20, help="target tokens per shard")
    parser.add_argument("--tokenizer-train-bytes", type=int, default=64 << 20,
                        help="text used to train the tokenizer (a prefix of the inputs)")
    args = parser.parse_args(argv)
    try:
        files = collect_inputs(args.input, args.python_stdlib)
        prepare(files, args.output, args.vocab_size, args.tokenizer, args.val_fraction,
                args.shard_tokens, args.tokenizer_train_bytes)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"prepare_data: error: {exc}", file=sys.stderr)
        return 2
    return 0
