"""The work plan: input patterns -> sorted files -> pieces -> work units of bounded size.

Files are sorted by path and each is cut into pieces (megallm/data/formats.py); binary
files are left out, each with a warning (`Plan.skipped`).
Consecutive pieces are packed into a unit while it stays within `unit_bytes`; a piece
larger than that is a unit of its own. A unit is what one worker tokenizes and what
names its shards, and the plan depends only on the inputs and `unit_bytes`, never on
the worker count. So shard names and contents do not depend on it either.
"""

from __future__ import annotations

import glob
import hashlib
import json
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

from megallm.data.formats import Piece, Undecodable, binary_reason, documents, pieces, skipped_binary
from megallm.errors import DataError


@dataclass(frozen=True)
class Unit:
    index: int
    pieces: tuple[Piece, ...]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)

    def describe(self) -> list[dict]:
        """What the unit reads, as JSON: its record must match it for the unit to count as done."""
        return [asdict(p) for p in self.pieces]

    def documents(self, text_field: str, undecodable: Optional[list[Undecodable]] = None) -> Iterator[tuple[str, str]]:
        for piece in self.pieces:
            yield from documents(piece, text_field, undecodable)


@dataclass(frozen=True)
class Plan:
    units: tuple[Unit, ...]
    unit_bytes: int
    skipped: tuple[str, ...] = ()  # a warning per input left out (binary files)

    @property
    def size(self) -> int:
        return sum(u.size for u in self.units)

    def fingerprint(self) -> str:
        """Identifies the inputs and how they were cut: every part of one prepare must share it."""
        described = json.dumps([self.unit_bytes, [u.describe() for u in self.units]], sort_keys=True)
        return hashlib.sha256(described.encode()).hexdigest()


def python_stdlib_files() -> list[Path]:
    """The running interpreter's standard-library sources (a corpus every machine has), empty files left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if "site-packages" not in p.parts and p.is_file() and p.stat().st_size > 0)


def collect_inputs(patterns: list[str], use_stdlib: bool, what: str = "input") -> list[Path]:
    """The files the patterns (and the standard library) name, sorted; `what` names them in errors."""
    files: set[Path] = set(python_stdlib_files()) if use_stdlib else set()
    for pattern in patterns:
        matches = [Path(m) for m in glob.glob(pattern, recursive=True)]
        matches = [m for m in matches if m.is_file()]
        if not matches:
            raise DataError(f"{what} {pattern!r} matches no file; check the path, and quote globs so the shell "
                            "does not expand them")
        files.update(matches)
    if not files:
        raise DataError("no input files: give --input FILE_OR_GLOB (repeatable) or --python-stdlib")
    return sorted(files)


def plan_units(files: list[Path], unit_bytes: int, text_field: str) -> Plan:
    if unit_bytes < 1:
        raise DataError(f"unit size {unit_bytes} bytes must be positive; pass --unit-mb with a positive size")
    units: list[Unit] = []
    current: list[Piece] = []
    current_size = 0
    binary = {}
    for path in sorted(files):
        if reason := binary_reason(path):
            binary[path] = reason
            continue
        for piece in pieces(path, unit_bytes, text_field):
            if current and current_size + piece.size > unit_bytes:
                units.append(Unit(len(units), tuple(current)))
                current, current_size = [], 0
            current.append(piece)
            current_size += piece.size
    if current:
        units.append(Unit(len(units), tuple(current)))
    if not units and binary:
        path, reason = next(iter(binary.items()))
        raise DataError(f"no text to prepare: every input is binary, e.g. {path} ({reason}); give text, JSON lines "
                        "or Parquet files")
    return Plan(tuple(units), unit_bytes, tuple(skipped_binary(path, reason) for path, reason in binary.items()))
