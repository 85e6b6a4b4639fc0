"""`tools/validate_data.py`: check every shard of a prepared corpus and print its statistics.

Exit 1 with one line per problem on stderr (a damaged corpus has many), 0 when sound.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megallm.data.validate import validate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/validate_data.py",
                                     description="Check every shard of a prepared corpus and print its statistics.")
    parser.add_argument("corpus", type=Path, help="folder written by tools/prepare_data.py")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Statistics on stdout; each problem on its own stderr line (exit 1), as many as there are."""
    stats, problems = validate(args.corpus)
    for split, split_stats in stats.items():
        print(split_stats.describe(split))
    for problem in problems:
        print(f"validate_data: {problem}", file=sys.stderr)
    if problems:
        print(f"{args.corpus}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.corpus}: OK")
    return 0
