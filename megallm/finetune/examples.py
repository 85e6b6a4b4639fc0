"""Labelled rows for fine-tuning, read from JSON lines (`.jsonl`, `.json`: one object per line) or
CSV (`.csv`, with a header): classification rows `{text, label}` and supervised pairs
`{prompt, response}` (field names from finetune.*_field).

Task files of tools/evaluate.py are read too (their `{"task": ...}` header line is skipped).
Every problem is a DataError that names the file and line: a line that is not a JSON object, a
missing or empty field, a validation label the training rows never had. Labels are compared
as text (`1` and `"1"` are one label).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, TypeVar

from megallm.errors import DataError

FORMATS = (".jsonl", ".json", ".csv")
Row = TypeVar("Row")


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str
    where: str  # "file:line"


@dataclass(frozen=True)
class PromptResponse:
    prompt: str
    response: str
    where: str


def read_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """("file:line", row) for every row of a JSON-lines or CSV file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; give finetune.train_file / finetune.val_file as a .jsonl or .csv file")
    if path.suffix not in FORMATS:
        raise DataError(f"{path}: unknown format {path.suffix!r}; fine-tuning reads {', '.join(FORMATS)}")
    with open(path, newline="" if path.suffix == ".csv" else None, encoding="utf-8") as f:
        if path.suffix == ".csv":
            reader = csv.DictReader(f)
            for row in reader:
                yield f"{path}:{reader.line_num}", row
            return
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}); "
                                "each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: a JSON {type(row).__name__}, not an object with the fields")
            if number == 1 and set(row) == {"task"}:  # an evaluation task file's header (megallm.evaluation.tasks)
                continue
            yield f"{path}:{number}", row


def _field(row: dict, name: str, where: str) -> str:
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        present = ", ".join(repr(k) for k in row) or "none"
        raise DataError(f"{where}: no {name!r} (fields: {present}); set finetune.*_field to the file's field names")
    if isinstance(value, (dict, list)):
        raise DataError(f"{where}: {name!r} is a JSON {type(value).__name__}; it must be text or a number")
    return str(value)


def read_classification(path: Path, text_field: str, label_field: str) -> list[LabelledText]:
    rows = [LabelledText(_field(row, text_field, where), _field(row, label_field, where).strip(), where)
            for where, row in read_rows(path)]
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows


def read_pairs(path: Path, prompt_field: str, response_field: str) -> list[PromptResponse]:
    rows = [PromptResponse(_field(row, prompt_field, where), _field(row, response_field, where), where)
            for where, row in read_rows(path)]
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows


def label_names(train: Sequence[LabelledText]) -> list[str]:
    """The classes, sorted: class i is the i-th name. At least two are needed."""
    names = sorted({row.label for row in train})
    if len(names) < 2:
        raise DataError(f"the training rows have {len(names)} label ({', '.join(names)}); a classifier needs two "
                        "or more")
    return names


def check_labels(rows: Sequence[LabelledText], names: Sequence[str]) -> None:
    """Every row's label must be one the training rows have (the head has no output for others)."""
    known = set(names)
    for row in rows:
        if row.label not in known:
            listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            raise DataError(f"{row.where}: label {row.label!r} is not among the {len(names)} labels of the "
                            f"training rows ({listed}); fix the row or add training rows with that label")


def hold_out(rows: Sequence[Row], fraction: float, key) -> tuple[list[Row], list[Row]]:
    """(kept, held out): a row is held out when the hash of `key(row)` falls in the first `fraction`
    of the hash space, so the split does not depend on the rows' order or number."""
    def held(row) -> bool:
        digest = hashlib.sha256(key(row).encode()).digest()
        return int.from_bytes(digest[:8], "big") < fraction * 2**64

    kept = [row for row in rows if not held(row)]
    out = [row for row in rows if held(row)]
    if not kept or not out:
        raise DataError(f"holding out finetune.val_fraction={fraction} of {len(rows)} rows leaves "
                        f"{len(kept)} to train on and {len(out)} to validate; give finetune.val_file or change it")
    return kept, out
