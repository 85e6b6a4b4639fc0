"""Inputs -> tokenizer + WebDataset token shards + manifest: `python tools/prepare_data.py`.

The steps:
1. Plan: the inputs are cut into work units (megallm/data/plan.py, formats.py).
2. Tokenizer: trained on a prefix of the documents, or read from --tokenizer. Either way
   it is written to OUTPUT/tokenizer.json.
3. Units: a pool of worker processes tokenizes the units (megallm/data/units.py),
   skipping units an earlier run finished.
4. Merge: the unit records become manifest.json (megallm/data/parts.py).

A plain run does every step. For SLURM arrays, `--tokenizer-only`, `--part I/N` and
`--merge` each do part of the work. The same inputs and options give byte-identical
shards and manifest, whatever the number of workers or parts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from tokenizers import Tokenizer

from megallm.data.parts import Part, merge, write_part_record
from megallm.data.plan import Plan, collect_inputs, plan_units
from megallm.data.progress import Progress
from megallm.data.shards import MANIFEST, DataError, Manifest, atomic_write_bytes
from megallm.data.tokenizer import load_tokenizer, tokenizer_hash, train_bpe
from megallm.data.units import UnitSettings, init_worker, run_unit

TOKENIZER = "tokenizer.json"
Log = Callable[[str], None]


def available_cpus() -> int:
    """CPUs this process may run on (a SLURM allocation, not the whole node)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(kw_only=True)
class PrepareOptions:
    vocab_size: int = 8192  # BPE vocabulary when training a tokenizer
    tokenizer_path: Path | None = None  # use this tokenizer.json instead of training one
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


def training_texts(plan: Plan, text_field: str, budget: int) -> Iterator[str]:
    """The first documents of the plan, up to about `budget` characters: the same on every run."""
    for unit in plan.units:
        for _, text in unit.documents(text_field):
            if budget <= 0:
                return
            budget -= len(text)
            yield text


def obtain_tokenizer(plan: Plan, output: Path, options: PrepareOptions, log: Log, may_train: bool) -> Tokenizer:
    """--tokenizer, else a newly trained one (`may_train`), else OUTPUT/tokenizer.json; written to OUTPUT."""
    installed = output / TOKENIZER
    if options.tokenizer_path is not None:
        tok = load_tokenizer(options.tokenizer_path)
    elif may_train:
        log(f"training a {options.vocab_size}-token byte-level BPE on up to "
            f"{options.tokenizer_train_bytes / 2**20:,.0f} MiB of the inputs")
        tok = train_bpe(training_texts(plan, options.text_field, options.tokenizer_train_bytes), options.vocab_size)
    elif installed.is_file():
        return load_tokenizer(installed)
    else:
        raise DataError(f"--part needs a tokenizer: run `tools/prepare_data.py --tokenizer-only --output {output} "
                        "...` first, or pass --tokenizer FILE")
    text = tok.to_str(pretty=True)
    if not installed.is_file() or installed.read_text() != text:
        atomic_write_bytes(installed, text.encode())
    return tok


def run_part(plan: Plan, output: Path, options: PrepareOptions, tok: Tokenizer, part: Part, log: Log) -> None:
    """Tokenize the part's units in a pool of workers, then write the part's record."""
    settings = UnitSettings(tokenizer_hash(tok), options.text_field, options.val_fraction, options.shard_tokens)
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
    log(progress.summary())
    write_part_record(output, part, plan, settings)


def start_writing(output: Path) -> None:
    """Make OUTPUT and withdraw its manifest: until the merge, the folder is not a corpus."""
    output.mkdir(parents=True, exist_ok=True)
    (output / MANIFEST).unlink(missing_ok=True)


def prepare(files: list[Path], output: Path, log: Log = print, **options) -> Manifest:
    """A whole prepare: tokenizer, every unit (part 0/1), merge. `options`: fields of PrepareOptions."""
    opts = PrepareOptions(**options)
    plan = plan_units(files, opts.unit_bytes, opts.text_field)
    start_writing(output)
    tok = obtain_tokenizer(plan, output, opts, log, may_train=True)
    run_part(plan, output, opts, tok, Part(0, 1), log)
    return merge(output, count=1, log=log)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = PrepareOptions()
    parser = argparse.ArgumentParser(
        prog="tools/prepare_data.py",
        description="Tokenize text, JSON lines or Parquet into WebDataset token shards with a manifest, for "
                    "launch/pretrain.py. Re-running the same command resumes an interrupted prepare.",
    )
    parser.add_argument("--input", action="append", default=[],
                        help="file or glob (** recurses), repeatable: .jsonl, .jsonl.gz, .parquet, else plain text "
                             "(one file = one document)")
    parser.add_argument("--python-stdlib", action="store_true", help="add this Python's standard-library sources")
    parser.add_argument("--output", required=True, type=Path, help="corpus folder to write (data.path)")
    parser.add_argument("--text-field", default=defaults.text_field, help="JSON-lines field / Parquet column of the text")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="BPE vocabulary when training")
    parser.add_argument("--tokenizer", type=Path, help="use this tokenizer.json instead of training one")
    parser.add_argument("--tokenizer-train-bytes", type=int, default=defaults.tokenizer_train_bytes,
                        help="text used to train the tokenizer (a prefix of the inputs)")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction, help="share of documents held out")
    parser.add_argument("--shard-tokens", type=int, default=defaults.shard_tokens, help="target tokens per shard")
    parser.add_argument("--unit-mb", type=float, default=defaults.unit_bytes / (1 << 20),
                        help="input MiB per work unit (the inputs are cut into units; each worker takes one at a time)")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="tokenizing processes (default: the CPUs this process may use)")
    parser.add_argument("--progress-every", type=float, default=defaults.progress_every,
                        help="seconds between progress lines")
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--tokenizer-only", action="store_true", help="only write OUTPUT/tokenizer.json, then exit")
    step.add_argument("--part", metavar="I/N",
                      help="only the units with index %% N == I (a SLURM array task); needs --tokenizer or a "
                           "tokenizer from --tokenizer-only")
    step.add_argument("--merge", action="store_true", help="after all N parts: check them and write manifest.json")
    return parser.parse_args(argv)


def run_step(args: argparse.Namespace, options: PrepareOptions, log: Log) -> None:
    """What the flags ask for: the merge, the tokenizer only, one part, or everything."""
    if args.merge:
        has_inputs = bool(args.input or args.python_stdlib)
        files = collect_inputs(args.input, args.python_stdlib) if has_inputs else None
        merge(args.output, plan=plan_units(files, options.unit_bytes, options.text_field) if files else None, log=log)
        return
    part = Part.parse(args.part) if args.part is not None else None
    files = collect_inputs(args.input, args.python_stdlib)
    if part is None and not args.tokenizer_only:
        prepare(files, args.output, log, **vars(options))
        return
    plan = plan_units(files, options.unit_bytes, options.text_field)
    start_writing(args.output)
    tok = obtain_tokenizer(plan, args.output, options, log, may_train=args.tokenizer_only)
    if part is None:
        log(f"wrote {args.output / TOKENIZER} ({tok.get_vocab_size()} tokens)")
    else:
        run_part(plan, args.output, options, tok, part, log)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = PrepareOptions(
            vocab_size=args.vocab_size, tokenizer_path=args.tokenizer, val_fraction=args.val_fraction,
            shard_tokens=args.shard_tokens, tokenizer_train_bytes=args.tokenizer_train_bytes,
            text_field=args.text_field, unit_bytes=round(args.unit_mb * (1 << 20)), workers=args.workers,
            progress_every=args.progress_every)
        run_step(args, options, partial(print, flush=True))
    except (DataError, OSError) as exc:  # OSError: an output folder that cannot be written, a full disk
        print(f"prepare_data: error: {exc}", file=sys.stderr)
        return 2
    return 0
