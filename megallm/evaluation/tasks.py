"""Evaluation task files: reading (and writing) one task of examples, every mistake a one-line DataError.

A task file holds JSON lines, one example per line (blank lines are skipped):

    {"input": "Fortune: ...\\nCategory:", "choices": ["art", "food", "law"], "gold": 1}   multiple choice
    {"input": "English: File not found\\nGerman:", "target": "Datei nicht gefunden"}    generation

- "input" (string, required): the query, without demonstrations (megallm.evaluation.prompts
  joins demonstrations and query, and puts one space before an answer);
- multiple choice: "choices" (two or more distinct strings) and "gold" (the index of the
  right one); the model is scored on each choice as a continuation of the prompt;
- generation: "target" (string), the reference output;
- "id" (string, optional, unique in the file), else "<file name>:<line number>".

All examples of one file are of one kind. The first line may be a header naming the task
and its metrics: `{"task": {"name": "translation_en_de", "metrics": ["bleu"]}}`. Metrics:
multiple choice ("accuracy",) only; generation any of ("bleu", "rouge"), default both (see
megallm.evaluation.metrics). A task's name is, first found: `read_task`'s `name`, the
header's, the file's stem.

A file that breaks any rule raises megallm.errors.DataError with one line naming the file
and line, e.g. `tasks/x.jsonl:7: "gold" is 4 but there are 3 choices`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from megallm.errors import DataError

MULTIPLE_CHOICE = "multiple_choice"
GENERATION = "generation"
KINDS = (MULTIPLE_CHOICE, GENERATION)
# The metrics a task of each kind may name, in the order they are reported; the defaults are all of them.
METRICS = {MULTIPLE_CHOICE: ("accuracy",), GENERATION: ("bleu", "rouge")}
KEYS = {MULTIPLE_CHOICE: {"input", "choices", "gold", "id"}, GENERATION: {"input", "target", "id"}}
HEADER_KEYS = {"name", "metrics"}


@dataclass(frozen=True)
class Example:
    input: str                                 # the query text, without demonstrations
    target: Optional[str] = None               # generation tasks: the reference output
    choices: Optional[tuple[str, ...]] = None  # multiple choice: candidate continuations
    gold: Optional[int] = None                 # multiple choice: index of the right choice
    id: str = ""                               # the line's "id", else "<file name>:<line number>"

    @property
    def kind(self) -> str:
        return MULTIPLE_CHOICE if self.choices is not None else GENERATION


@dataclass(frozen=True)
class Task:
    name: str                     # file stem unless given
    kind: str                     # "multiple_choice" or "generation"
    examples: tuple[Example, ...]
    metrics: tuple[str, ...]      # multiple_choice: ("accuracy",); generation: from the header or ("bleu", "rouge")
    path: Path


class _LineError(Exception):
    """A problem with one line; read_task adds the file and line number."""


def read_task(path: Path, name: Optional[str] = None) -> Task:
    """The task in the JSON-lines file `path` (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: task file does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    header: dict[str, Any] = {}
    examples: list[Example] = []
    first_of_kind: Optional[int] = None  # the line whose kind the file has
    seen_ids: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = _parse_object(line)
            if "task" in obj and not examples and not header:
                header = _parse_header(obj)
                continue
            example = _parse_example(obj, f"{path.name}:{number}")
            if examples and example.kind != examples[0].kind:
                raise _LineError(f"a {example.kind} example, but line {first_of_kind} is {examples[0].kind}; "
                                 "a file holds one kind")
            if example.id in seen_ids:
                raise _LineError(f'"id" {example.id!r} repeats line {seen_ids[example.id]}')
        except _LineError as exc:
            raise DataError(f"{path}:{number}: {exc}") from None
        first_of_kind = first_of_kind or number
        seen_ids[example.id] = number
        examples.append(example)
    if not examples:
        raise DataError(f"{path}: no examples (one JSON object per line; see megallm.evaluation.tasks)")
    kind = examples[0].kind
    metrics = tuple(header.get("metrics") or METRICS[kind])
    unknown = [m for m in metrics if m not in METRICS[kind]]
    if unknown:
        raise DataError(f"{path}:1: metrics {unknown} are not for {kind} tasks (choose from {list(METRICS[kind])})")
    return Task(name or header.get("name") or path.stem, kind, tuple(examples), metrics, path)


def _parse_object(line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _LineError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise _LineError(f"a JSON {type(obj).__name__}, not an object")
    return obj


def _parse_header(obj: dict) -> dict:
    header = obj["task"]
    if len(obj) != 1 or not isinstance(header, dict) or not set(header) <= HEADER_KEYS:
        raise _LineError('a header is {"task": {"name": ..., "metrics": [...]}} and nothing else')
    if "name" in header and not (isinstance(header["name"], str) and header["name"]):
        raise _LineError('the header\'s "name" must be a non-empty string')
    metrics = header.get("metrics", [])
    if not (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)):
        raise _LineError('the header\'s "metrics" must be a list of strings')
    return header


def _parse_example(obj: dict, default_id: str) -> Example:
    kind = MULTIPLE_CHOICE if "choices" in obj else GENERATION
    extra = sorted(set(obj) - KEYS[kind])
    if extra:
        raise _LineError(f"unexpected {', '.join(map(json.dumps, extra))} in a {kind} example "
                         f"(keys: {', '.join(sorted(KEYS[kind]))})")
    text = _string(obj, "input")
    example_id = _string(obj, "id") if "id" in obj else default_id
    if kind == GENERATION:
        return Example(text, target=_string(obj, "target"), id=example_id)
    choices, gold = obj["choices"], obj.get("gold")
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
        raise _LineError('"choices" must be a list of two or more non-empty strings')
    if len(set(choices)) != len(choices):
        raise _LineError('"choices" repeat a choice')
    if "gold" not in obj:
        raise _LineError('missing "gold" (the index of the right choice)')
    if not isinstance(gold, int) or isinstance(gold, bool):
        raise _LineError(f'"gold" must be an integer index, not {json.dumps(gold)}')
    if not 0 <= gold < len(choices):
        raise _LineError(f'"gold" is {gold} but there are {len(choices)} choices')
    return Example(text, choices=tuple(choices), gold=gold, id=example_id)


def _string(obj: dict, key: str) -> str:
    if key not in obj:
        raise _LineError(f"missing {json.dumps(key)}")
    if not isinstance(obj[key], str):
        raise _LineError(f"{json.dumps(key)} must be a string, not {type(obj[key]).__name__}")
    return obj[key]


def write_task(path: Path, examples: Sequence[Example], name: Optional[str] = None,
               metrics: Optional[Sequence[str]] = None) -> Path:
    """Write `examples` as a task file that read_task reads back; a header if `name` or `metrics`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    if name or metrics:
        header: dict[str, Any] = {"name": name} if name else {}
        header.update({"metrics": list(metrics)} if metrics else {})
        lines.append(json.dumps({"task": header}, ensure_ascii=False))
    lines += [json.dumps(_as_json(e), ensure_ascii=False) for e in examples]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _as_json(example: Example) -> dict:
    obj: dict[str, Any] = {"input": example.input}
    if example.choices is not None:  # multiple choice
        obj.update(choices=list(example.choices), gold=example.gold)
    else:
        obj["target"] = example.target
    if example.id:
        obj["id"] = example.id
    return obj
