"""`tools/prepare_data.py`: the command line of megallm.data.prepare (one step per invocation)."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from megallm.cli import run_command
from megallm.data.parts import Part, merge
from megallm.data.plan import collect_inputs
from megallm.data.prepare import (
    Log,
    PrepareOptions,
    make_plan,
    obtain_tokenizer,
    prepare,
    run_part,
    start_writing,
)
from megallm.data.prepare_mixture import parse_sources, prepare_mixture
from megallm.errors import DataError
from megallm.files import TOKENIZER_FILE

PROG = "prepare_data"


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--source", action="append", default=[], metavar="NAME=GLOB",
                        help="instead of --input, repeatable: one corpus of a data mixture, written to OUTPUT/NAME; "
                             "every source gets one tokenizer, trained on a sample of all of them split by their "
                             "weights (or --tokenizer), and the data.sources overrides to train on them are printed")
    parser.add_argument("--source-weight", action="append", default=[], metavar="NAME=W",
                        help="a source's weight, repeatable (relative; every source or none: default 1 each): its "
                             "share of --tokenizer-train-bytes, and its data.sources weight in the printed overrides")
    parser.add_argument("--output", required=True, type=Path,
                        help="corpus folder to write (data.path); with --source, the folder of the sources' corpora")
    parser.add_argument("--text-field", default=defaults.text_field, help="JSON-lines field / Parquet column of the text")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="BPE vocabulary when training")
    parser.add_argument("--tokenizer", type=Path,
                        help="use this tokenizer.json instead of training one (any Hugging Face fast tokenizer; "
                             "tokenizer_config.json / special_tokens_map.json beside it name its eos, and documents "
                             "begin with the bos its post-processor adds, as Llama 3's <|begin_of_text|>)")
    parser.add_argument("--eos-token", help="end-of-document token (default: the tokenizer's declared eos_token, "
                                            "else <|endoftext|>)")
    parser.add_argument("--mask-token", help="masked-LM mask token (train.objective=mlm): added to a --tokenizer that "
                                             "lacks it, e.g. '<|mask|>' (trained tokenizers always have <|mask|>; "
                                             "default: the tokenizer's declared mask_token)")
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
    return parser


def run_step(args: argparse.Namespace, options: PrepareOptions, log: Log) -> None:
    """What the flags ask for: the merge, the tokenizer only, one part, everything, or a mixture's sources."""
    if args.source or args.source_weight:
        run_mixture(args, options, log)
        return
    if args.merge:
        has_inputs = bool(args.input or args.python_stdlib)
        files = collect_inputs(args.input, args.python_stdlib) if has_inputs else None
        merge(args.output, plan=make_plan(files, options, log) if files else None, log=log)
        return
    part = Part.parse(args.part) if args.part is not None else None
    files = collect_inputs(args.input, args.python_stdlib)
    if part is None and not args.tokenizer_only:
        prepare(files, args.output, log, **vars(options))
        return
    plan = make_plan(files, options, log)
    start_writing(args.output)
    tok = obtain_tokenizer(plan, args.output, options, log, may_train=args.tokenizer_only)
    if part is None:
        log(f"wrote {args.output / TOKENIZER_FILE} ({tok.get_vocab_size()} tokens)")
    else:
        run_part(plan, args.output, options, tok, part, log)


def run_mixture(args: argparse.Namespace, options: PrepareOptions, log: Log) -> None:
    """--source: every source's corpus, or with --tokenizer-only their tokenizer (megallm.data.prepare_mixture)."""
    if not args.source:
        raise DataError("--source-weight weighs a source: give the sources with --source NAME=GLOB")
    if args.input or args.python_stdlib:
        raise DataError("--source and --input (or --python-stdlib) exclude each other: give each source's files "
                        "as its --source NAME=GLOB")
    if args.part is not None or args.merge:
        raise DataError("--part and --merge prepare one corpus: write the sources' tokenizer with --source ... "
                        f"--tokenizer-only, then prepare each source with --tokenizer {args.output / TOKENIZER_FILE}")
    prepare_mixture(parse_sources(args.source, args.source_weight), args.output, log,
                    tokenizer_only=args.tokenizer_only, **vars(options))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    options = PrepareOptions(
        vocab_size=args.vocab_size, tokenizer_path=args.tokenizer, eos_token=args.eos_token, mask_token=args.mask_token,
        val_fraction=args.val_fraction,
        shard_tokens=args.shard_tokens, tokenizer_train_bytes=args.tokenizer_train_bytes,
        text_field=args.text_field, unit_bytes=round(args.unit_mb * (1 << 20)), workers=args.workers,
        progress_every=args.progress_every)
    try:
        run_step(args, options, partial(print, flush=True))
    except OSError as exc:  # an output folder that cannot be written, a full disk
        raise DataError(str(exc)) from exc
    return 0
