"""Build the evaluation datasets from this machine's own files: `python tools/make_eval_data.py OUT [--language de]`.

Fortunes (Debian's `fortunes`), the installed gettext catalogs of one language, the dpkg
package descriptions and the Python standard library's docstrings become classification
files and task files in OUT, with README.md, LICENSES.md and manifest.json
(eval_sources.py beside this script; docs/evaluation/DATA.md). A problem the user can fix is one
line `make_eval_data: error: ...`, exit code 2.

This is a data-preparation tool, not library code: it lives in tools/ with its harvesting
module, `eval_sources.py`, and imports the library (megallm.evaluation.tasks' file format)
like any user script. Python searches a script's own folder for modules first, so the module
beside it imports by its name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from eval_sources import FORTUNE_CATEGORIES, write_datasets

from megallm.cli import run_command
from megallm.errors import UsageError

PROG = "make_eval_data"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/make_eval_data.py",
        description="Build evaluation datasets from this machine's files (nothing is downloaded):\n"
                    "  classification/fortunes             fortune -> category ({\"text\", \"label\"} lines)\n"
                    "  tasks/fortune_category              the same as a multiple-choice task\n"
                    "  tasks/translation_en_LANGUAGE       gettext messages: English -> LANGUAGE (BLEU)\n"
                    "  tasks/package_summary               dpkg long description -> short description\n"
                    "  tasks/docstring                     stdlib function signature -> docstring summary\n"
                    "each split 80/10/10 into train/validation/test.jsonl.",
        epilog="Fortunes need Debian's package: apt-get install fortunes (or pass --skip-missing).\n\n"
               "example:\n  python tools/make_eval_data.py data/eval --language de",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", type=Path, metavar="OUT", help="the folder to create (must not exist)")
    p.add_argument("--language", default="de",
                   help="translation target: a folder of /usr/share/locale with LC_MESSAGES/*.mo (default de)")
    p.add_argument("--max-per-source", type=int,
                   help="at most this many examples from each source, before splitting (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation the splits are cut from (default 0)")
    p.add_argument("--fortune-categories", default=",".join(FORTUNE_CATEGORIES),
                   help=f"comma-separated fortune files to classify (default {','.join(FORTUNE_CATEGORIES)})")
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out a source this machine lacks (noted in README.md) instead of stopping")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise UsageError(f"{args.out} already exists; remove it or choose another folder")
    if args.max_per_source is not None and args.max_per_source < 10:
        raise UsageError("--max-per-source must be >= 10 (each split takes a tenth)")
    categories = [c.strip() for c in args.fortune_categories.split(",") if c.strip()]
    if len(categories) < 2:
        raise UsageError("--fortune-categories needs two or more categories")
    write_datasets(args.out, language=args.language, max_per_source=args.max_per_source, seed=args.seed,
                   skip_missing=args.skip_missing, fortune_categories=categories,
                   log=lambda line: print(f"{PROG}: {line}", file=sys.stderr))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
