"""Inputs -> tokenizer + WebDataset token shards + manifest: `python tools/prepare_data.py`.

The steps:
1. Plan: the inputs are cut into work units (megallm/data/plan.py, formats.py).
2. Tokenizer: trained on a prefix of the documents (progress lines while it trains), or
   read from --tokenizer. Either way it is written to OUTPUT/tokenizer.json: a given one
   byte for byte (rewritten only when --mask-token adds a token to it, then with that
   token appended to its added tokens and the rest as it was), with the Hugging Face files
   beside it (tokenizer_config.json, special_tokens_map.json, chat_template.jinja);
   --eos-token is recorded in OUTPUT/tokenizer_config.json. Its special tokens frame each
   document (megallm.data.tokenizer.special_tokens).
3. Units: a pool of worker processes tokenizes the units (megallm/data/units.py),
   skipping units an earlier run finished. Binary inputs are left out when planning, and a
   text file that is not all UTF-8 is named when its unit reads it, each in a warning line.
4. Merge: the unit records become manifest.json (megallm/data/parts.py).

A plain run does every step. For SLURM arrays, `--tokenizer-only`, `--part I/N` and
`--merge` each do part of the work. The same inputs and options give byte-identical
shards and manifest, whatever the number of workers or parts.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tokenizers import Tokenizer

from megallm.data.parts import Part, merge, write_part_record
from megallm.data.plan import Plan, plan_units
from megallm.data.progress import Progress
from megallm.data.shards import MANIFEST, Manifest
from megallm.data.tokenizer import (
    add_mask_token,
    load_tokenizer,
    special_tokens,
    tokenizer_hash,
    tokenizer_json,
    train_bpe,
    with_added_token,
)
from megallm.data.units import UnitSettings, encoding_pieces, init_worker, run_unit
from megallm.errors import DataError
from megallm.files import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_SIDE_FILES, atomic_write_bytes

Log = Callable[[str], None]


def available_cpus() -> int:
    """CPUs this process may run on (a SLURM allocation, not the whole node)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(kw_only=True)
class PrepareOptions:
    vocab_size: int = 8192  # BPE vocabulary when training a tokenizer
    tokenizer_path: Path | None = None  # use this tokenizer.json instead of training one
    eos_token: str | None = None  # end-of-document token, instead of the one the tokenizer declares
    # Masked-LM's mask token: added to a --tokenizer that lacks it and declared in OUTPUT/tokenizer_config.json
    # (trained tokenizers always have <|mask|>).
    mask_token: str | None = None
    val_fraction: float = 0.02  # share of documents held out, by a hash of each document's identity
    shard_tokens: int = 1 << 20  # target tokens per shard
    tokenizer_train_bytes: int = 64 << 20  # text (characters) the tokenizer is trained on: a prefix of the inputs
    text_field: str = "text"  # JSON-lines field / Parquet column holding the documents
    unit_bytes: int = 16 << 20  # input per work unit: bounds each worker's memory, names the shards
    workers: int = field(default_factory=available_cpus)  # tokenizing processes
    progress_every: float = 5.0  # seconds between progress lines

    def __post_init__(self):
        if not 0 <= self.val_fraction < 1:
            raise DataError(f"--val-fraction {self.val_fraction} must be in [0, 1)")
        if self.vocab_size < 257 and self.tokenizer_path is None:
            raise DataError(f"--vocab-size {self.vocab_size} is too small: byte-level BPE needs at least 257 "
                            "(256 bytes and the end-of-document token)")
        for flag, value in (("--shard-tokens", self.shard_tokens), ("--unit-mb", self.unit_bytes),
                            ("--workers", self.workers)):
            if value < 1:
                raise DataError(f"{flag} must be positive, got {value}")
        if self.tokenizer_path is not None:  # a tokenizer without an end-of-document token: refused before any write
            special_tokens(self.tokenizer_path, self.eos_token)


def training_texts(plan: Plan, text_field: str, budget: int) -> Iterator[str]:
    """The first `budget` characters of the plan's documents (the last one cut), the same on every run,
    in the pieces that encoding cuts them into: the trainer's memory stays bounded as the workers' does."""
    for unit in plan.units:
        for _, text in unit.documents(text_field):
            if budget <= 0:
                return
            yield from encoding_pieces(text[:budget])
            budget -= len(text)


def obtain_tokenizer(plan: Plan, output: Path, options: PrepareOptions, log: Log, may_train: bool) -> Tokenizer:
    """--tokenizer, else a newly trained one (`may_train`), else OUTPUT/tokenizer.json; written to OUTPUT."""
    installed = output / TOKENIZER_FILE
    if options.tokenizer_path is not None:
        tok = load_tokenizer(options.tokenizer_path)
        data = options.tokenizer_path.read_bytes()  # byte for byte: an older `tokenizers` must read it too
        if options.mask_token is not None and add_mask_token(tok, options.mask_token):
            appended = with_added_token(data, tok, options.mask_token)
            how = ("the given file with it appended to its added tokens" if appended is not None
                   else "the tokenizer with it, as `tokenizers` writes it")
            data = appended if appended is not None else tokenizer_json(tok).encode()
            log(f"added the mask token {options.mask_token!r} to the tokenizer (id "
                f"{tok.token_to_id(options.mask_token)}); {installed} is {how}")
    elif may_train:
        log(f"training a {options.vocab_size}-token byte-level BPE on up to "
            f"{options.tokenizer_train_bytes / 2**20:,.0f} MiB of the inputs")
        tok = train_tokenizer(training_texts(plan, options.text_field, options.tokenizer_train_bytes), options, log)
        data = tokenizer_json(tok).encode()
    elif installed.is_file():
        return load_tokenizer(installed)
    else:
        raise DataError(f"--part needs a tokenizer: run `tools/prepare_data.py --tokenizer-only --output {output} "
                        "...` first, or pass --tokenizer FILE")
    install_tokenizer(output, tok, data, options)
    return tok


def train_tokenizer(texts: Iterable[str], options: PrepareOptions, log: Log) -> Tokenizer:
    """A BPE of options.vocab_size tokens trained on `texts`, with progress lines and the time it took."""
    start = time.perf_counter()
    tok = train_bpe(texts, options.vocab_size, log=log, every=options.progress_every)
    short = (f" (not {options.vocab_size}: the text holds no more pairs to merge)"
             if tok.get_vocab_size() < options.vocab_size else "")
    log(f"trained a {tok.get_vocab_size()}-token tokenizer{short} in {time.perf_counter() - start:,.1f} s")
    return tok


def install_tokenizer(output: Path, tok: Tokenizer, data: bytes, options: PrepareOptions) -> None:
    """OUTPUT/tokenizer.json holds `data` (`tok`'s file), with its side files; its special tokens are checked."""
    installed = output / TOKENIZER_FILE
    if not installed.is_file() or installed.read_bytes() != data:
        atomic_write_bytes(installed, data)
    install_side_files(options.tokenizer_path, output, {"eos_token": options.eos_token,
                                                        "mask_token": options.mask_token})
    special_tokens(installed, tok=tok)  # a trained tokenizer and --eos-token


def install_side_files(tokenizer_path: Path | None, output: Path, declared: dict[str, str | None]) -> None:
    """OUTPUT gets the side files beside `tokenizer_path` (none for a trained tokenizer), and the
    special tokens `declared` ({"eos_token": ..., "mask_token": ...}, None: as the tokenizer says) in
    its tokenizer_config.json: the corpus then says how its documents end and what masks a token."""
    for name in TOKENIZER_SIDE_FILES:
        source = tokenizer_path.with_name(name) if tokenizer_path is not None else None
        target = output / name
        data = source.read_bytes() if source is not None and source.is_file() else None
        if data is None:
            target.unlink(missing_ok=True)
        elif not target.is_file() or target.read_bytes() != data:
            atomic_write_bytes(target, data)
    declared = {key: value for key, value in declared.items() if value is not None}
    if declared:
        target = output / TOKENIZER_CONFIG_FILE
        config = json.loads(target.read_text()) if target.is_file() else {}
        if any(config.get(key) != value for key, value in declared.items()):
            atomic_write_bytes(target, json.dumps({**config, **declared}, indent=2).encode())


def run_part(plan: Plan, output: Path, options: PrepareOptions, tok: Tokenizer, part: Part, log: Log) -> None:
    """Tokenize the part's units in a pool of workers, then write the part's record."""
    tokens = special_tokens(output / TOKENIZER_FILE, tok=tok)
    settings = UnitSettings(tokenizer_hash(tok), options.text_field, options.val_fraction, options.shard_tokens,
                            eos_id=tokens.eos_id, bos_id=tokens.bos_id)
    units = [u for u in plan.units if part.owns(u.index)]
    workers = max(1, min(options.workers, len(units)))
    size = sum(u.size for u in units)
    log(f"part {part.index}/{part.count}: {len(units)} of {len(plan.units)} units, {size / 2**20:,.1f} MiB, "
        f"{workers} worker processes")
    progress = Progress(len(units), size, workers, log, options.progress_every)
    if units:
        # spawn: workers start clean, whatever threads the caller runs (torch, a test harness)
        with multiprocessing.get_context("spawn").Pool(workers, initializer=init_worker) as pool:
            # imap: units are handed out one at a time, so memory stays about workers x unit size
            for result in pool.imap_unordered(partial(run_unit, output=output, settings=settings), units):
                progress.update(result)
                for warning in result.warnings:
                    log(warning)
    log(progress.summary())
    write_part_record(output, part, plan, settings)


def start_writing(output: Path) -> None:
    """Make OUTPUT and withdraw its manifest: until the merge, the folder is not a corpus."""
    output.mkdir(parents=True, exist_ok=True)
    (output / MANIFEST).unlink(missing_ok=True)


def make_plan(files: list[Path], options: PrepareOptions, log: Log) -> Plan:
    """The plan of `files`, each input it leaves out (a binary file) said in a warning line."""
    plan = plan_units(files, options.unit_bytes, options.text_field)
    for warning in plan.skipped:
        log(warning)
    return plan


def prepare(files: list[Path], output: Path, log: Log = print, **options) -> Manifest:
    """A whole prepare: tokenizer, every unit (part 0/1), merge. `options`: fields of PrepareOptions."""
    opts = PrepareOptions(**options)
    plan = make_plan(files, opts, log)
    start_writing(output)
    tok = obtain_tokenizer(plan, output, opts, log, may_train=True)
    run_part(plan, output, opts, tok, Part(0, 1), log)
    return merge(output, count=1, log=log)
