"""Input formats: how a file is cut into pieces of bounded size and how a piece yields its documents.

The format follows the file name:
- `.jsonl`: JSON lines, one document per line, taken from a field (`text` by default).
  A file larger than the unit size is cut into line-aligned byte ranges. Blank lines are
  skipped.
- `.jsonl.gz`: the same, gzipped. It cannot be cut, so the whole file is one piece.
- `.parquet` (needs pyarrow: `pip install -e .[parquet]`): one document per row, from
  the same field (a string column). Each row group is one piece.
- anything else: plain UTF-8 text, where the whole file is one document. A file with a
  NUL byte in its first 8000 bytes is binary, as git decides (an executable, an image,
  UTF-16 text): it is left out with a warning (`binary_reason`). Bytes that are not
  UTF-8 (Latin-1 text, a stray byte) are read as U+FFFD, and the unit that reads them
  warns, naming the file and the count (`Undecodable`).

A file that is not what its name says (a `.parquet` that is not Parquet) is a one-line
DataError naming it. Empty and null texts in JSON lines and Parquet are skipped. Every
document has an identity: the file path for plain text, `path:offset` for a JSON line
(the line's offset in the uncompressed stream), `path#row` for a Parquet row. The
identity decides the document's split, so the split does not change when other files are
added or the files are cut differently.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from megallm.errors import DataError

FIELD_HINT = "pass --text-field NAME"
BINARY_PROBE_BYTES = 8000  # what git reads to tell binary from text
# surrogateescape decodes each byte that is not UTF-8 as one of these (valid UTF-8 never gives them)
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class Piece:
    """A bounded part of one input file: bytes [begin, end) of text or JSON lines, row groups [begin, end) of Parquet."""

    path: str
    format: str  # "text", "jsonl", "jsonl.gz" or "parquet"
    begin: int
    end: int
    size: int  # bytes it holds (uncompressed for Parquet): what units are balanced by
    mtime_ns: int  # the file's modification time: a changed input is tokenized again on resume


@dataclass(frozen=True)
class Undecodable:
    """The bytes of a plain-text input that are not UTF-8, read as U+FFFD."""

    path: str
    count: int  # bytes that are not UTF-8
    first: int  # offset of the first

    def warning(self) -> str:
        return (f"warning: {self.path} is not UTF-8: {self.count:,} byte(s), the first at offset {self.first:,}, "
                "were read as U+FFFD; convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8) or leave it out")


def decode_text(data: bytes, path: str) -> tuple[str, Optional[Undecodable]]:
    """A plain-text file's text: UTF-8, each invalid sequence as U+FFFD, and what was not UTF-8 (None: all was)."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        count = len(_ESCAPED_BYTE.findall(data.decode("utf-8", errors="surrogateescape")))
        return data.decode("utf-8", errors="replace"), Undecodable(path, count, exc.start)


def binary_reason(path: Path) -> Optional[str]:
    """Why a plain-text input is binary ("a NUL byte at offset 7": as git decides), or None for text."""
    if format_of(path) != "text":
        return None
    with open(path, "rb") as f:
        offset = f.read(BINARY_PROBE_BYTES).find(b"\0")
    return f"a NUL byte at offset {offset}" if offset >= 0 else None


def skipped_binary(path: Path, reason: str) -> str:
    """The warning for a binary input left out."""
    return (f"warning: skipping {path}: binary ({reason}), not text; convert text in UTF-16 or UTF-32 to UTF-8, "
            "or leave the file out of --input")


def format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".jsonl.gz"):
        return "jsonl.gz"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".gz"):
        raise DataError(f"input {path} is gzipped, but only .jsonl.gz is read compressed; decompress it or leave it out")
    return "text"


def empty_input(path: Path | str) -> DataError:
    return DataError(f"input file {path} is empty; remove it or leave it out of --input")


def pieces(path: Path, unit_bytes: int, text_field: str) -> list[Piece]:
    """Cut one input file into pieces of at most about `unit_bytes` (one line or row group may exceed it)."""
    stat = path.stat()
    if stat.st_size == 0:
        raise empty_input(path)
    fmt = format_of(path)
    if fmt == "parquet":
        return parquet_pieces(path, text_field, stat.st_mtime_ns)
    if fmt != "jsonl":  # plain text and gzipped JSON lines cannot be cut
        return [Piece(str(path), fmt, 0, stat.st_size, stat.st_size, stat.st_mtime_ns)]
    cuts = [0]
    with open(path, "rb") as f:
        while cuts[-1] + unit_bytes < stat.st_size:
            f.seek(cuts[-1] + unit_bytes)
            f.readline()  # to the start of the next line
            if f.tell() >= stat.st_size:
                break
            cuts.append(f.tell())
    cuts.append(stat.st_size)
    return [Piece(str(path), fmt, a, b, b - a, stat.st_mtime_ns) for a, b in zip(cuts, cuts[1:])]


def parquet_file(path: str | Path):
    try:  # optional: pyarrow is the parquet extra
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow; install it with `pip install -e .[parquet]`") from None
    try:
        return pq.ParquetFile(str(path))
    except (pa.ArrowException, OSError) as exc:
        raise not_parquet(path, exc) from None


def not_parquet(path: str | Path, exc: Exception) -> DataError:
    return DataError(f"{path} is not a readable Parquet file ({exc}); re-write or re-download it, or rename it "
                     "if it holds another format")


def parquet_pieces(path: Path, text_field: str, mtime_ns: int) -> list[Piece]:
    pf = parquet_file(path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{path} has no column {text_field!r} (it has {', '.join(names)}); {FIELD_HINT}")
    column_type = pf.schema_arrow.field(text_field).type
    if str(column_type) not in ("string", "large_string", "string_view"):
        raise DataError(f"{path} column {text_field!r} holds {column_type}, not text; {FIELD_HINT}")
    if pf.metadata.num_rows == 0:
        raise empty_input(path)
    return [Piece(str(path), "parquet", g, g + 1, pf.metadata.row_group(g).total_byte_size, mtime_ns)
            for g in range(pf.metadata.num_row_groups)]


def documents(piece: Piece, text_field: str,
              undecodable: Optional[list[Undecodable]] = None) -> Iterator[tuple[str, str]]:
    """(identity, text) of each document in the piece, in file order; a plain-text file that is not
    all UTF-8 adds its `Undecodable` to `undecodable` (when given)."""
    if piece.format == "text":
        with open(piece.path, "rb") as f:
            text, problem = decode_text(f.read(), piece.path)
        if problem is not None and undecodable is not None:
            undecodable.append(problem)
        yield piece.path, text
    elif piece.format == "parquet":
        yield from parquet_documents(piece, text_field)
    else:
        yield from jsonl_documents(piece, text_field)


def parquet_documents(piece: Piece, text_field: str) -> Iterator[tuple[str, str]]:
    import pyarrow as pa  # deferred: the parquet extra (parquet_file names it when missing)

    pf = parquet_file(piece.path)
    for group in range(piece.begin, piece.end):
        first_row = sum(pf.metadata.row_group(g).num_rows for g in range(group))
        try:
            texts = pf.read_row_group(group, columns=[text_field]).column(0).to_pylist()
        except (pa.ArrowException, OSError) as exc:  # a file damaged past its footer
            raise not_parquet(piece.path, exc) from None
        for row, text in enumerate(texts, start=first_row):
            if text:
                yield f"{piece.path}#{row}", text


def jsonl_documents(piece: Piece, text_field: str) -> Iterator[tuple[str, str]]:
    compressed = piece.format == "jsonl.gz"
    with (gzip.open(piece.path, "rb") if compressed else open(piece.path, "rb")) as f:
        offset = piece.begin
        f.seek(offset)
        for line in f:
            if not compressed and offset >= piece.end:
                break
            text = json_line_text(line, text_field, piece, offset)
            if text:
                yield f"{piece.path}:{offset}", text
            offset += len(line)


def json_line_text(line: bytes, text_field: str, piece: Piece, offset: int) -> str | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise DataError(f"{piece.path} line {line_number(piece, offset)}: invalid JSON ({reason}); "
                        "fix or remove the line") from None
    if not isinstance(record, dict):
        raise DataError(f"{piece.path} line {line_number(piece, offset)}: a JSON {type(record).__name__}, "
                        "not an object; each line must be an object with a text field")
    if text_field not in record:
        raise DataError(f"{piece.path} line {line_number(piece, offset)} has no field {text_field!r} "
                        f"(it has {', '.join(record) or 'none'}); {FIELD_HINT}")
    text = record[text_field]
    if text is not None and not isinstance(text, str):
        raise DataError(f"{piece.path} line {line_number(piece, offset)}: field {text_field!r} holds a "
                        f"{type(text).__name__}, not text; {FIELD_HINT}")
    return text


def line_number(piece: Piece, offset: int) -> int:
    """1-based number of the line starting at `offset` (counted only when reporting an error)."""
    opener = gzip.open if piece.format == "jsonl.gz" else open
    newlines, remaining = 0, offset
    with opener(piece.path, "rb") as f:
        while remaining > 0:
            block = f.read(min(remaining, 1 << 20))
            if not block:
                break
            newlines += block.count(b"\n")
            remaining -= len(block)
    return newlines + 1
