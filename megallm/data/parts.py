"""Parts of one prepare (SLURM array tasks) and the merge that publishes the corpus.

`--part I/N` runs the units whose index % N == I and then writes
`records/part-I-of-N.json`: the plan's fingerprint, the settings and the unit count.
`--merge` checks three things: all N part records exist and agree, the tokenizer is the
one they used, and every unit's record matches them with its shards present. It then
lists the shards in unit order in `manifest.json`, written last and atomically. A plain
run is part 0/1 followed by the merge, so it gives the same corpus as N parts.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from megallm.data.plan import Plan
from megallm.data.shards import MANIFEST, Manifest, ShardInfo, present_side_files, token_dtype
from megallm.data.tokenizer import load_tokenizer, mask_token_id, tokenizer_hash
from megallm.data.units import (
    RECORDS,
    SHARD_NAME,
    SPLITS,
    UnitSettings,
    record_path,
    recorded_shards,
)
from megallm.errors import DataError
from megallm.files import TOKENIZER_FILE, atomic_write_bytes

PART_RECORD = re.compile(r"^part-(\d+)-of-(\d+)\.json$")


@dataclass(frozen=True)
class Part:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Part":
        match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if not match or int(match[1]) >= int(match[2]):
            raise DataError(f"--part {text!r} is not I/N with 0 <= I < N; e.g. --part 0/8 for the first of 8 parts")
        return cls(int(match[1]), int(match[2]))

    def owns(self, unit_index: int) -> bool:
        return unit_index % self.count == self.index

    def record_path(self, output: Path) -> Path:
        return output / RECORDS / f"part-{self.index}-of-{self.count}.json"


def write_part_record(output: Path, part: Part, plan: Plan, settings: UnitSettings) -> None:
    record = {"plan": plan.fingerprint(), "units": len(plan.units), "unit_bytes": plan.unit_bytes,
              "settings": asdict(settings)}
    atomic_write_bytes(part.record_path(output), json.dumps(record, indent=1).encode())


def finished_parts(output: Path) -> dict[int, dict[int, dict]]:
    """Part records found: {count: {index: record}}."""
    found: dict[int, dict[int, dict]] = {}
    folder = output / RECORDS
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if match := PART_RECORD.match(path.name):
            found.setdefault(int(match[2]), {})[int(match[1])] = json.loads(path.read_text())
    return found


def agreed_part_record(output: Path, count: int | None) -> tuple[int, dict]:
    """The record all N parts share; errors say which part is missing or disagrees."""
    found = finished_parts(output)
    if count is None:
        if len(found) > 1:
            raise DataError(f"{output / RECORDS} holds parts of {' and '.join(map(str, sorted(found)))}-part runs; "
                            "delete the part-*-of-N.json files of the stale run, then --merge")
        count = next(iter(found), None)
    if count is None or count not in found:
        raise DataError(f"no finished part in {output / RECORDS}; run every `--part I/N` first, then --merge")
    records = found[count]
    missing = [i for i in range(count) if i not in records]
    if missing:
        raise DataError(f"part(s) {', '.join(f'{i}/{count}' for i in missing)} of {output} not finished; "
                        "run them (or re-run the failed array tasks), then --merge")
    if any(records[i] != records[0] for i in range(count)):
        raise DataError(f"the {count} parts in {output} used different inputs or options; "
                        "re-run every part with the same arguments, then --merge")
    return count, records[0]


def merge(output: Path, count: int | None = None, plan: Plan | None = None,
          log: Callable[[str], None] = print) -> Manifest:
    """Check that every part finished and write manifest.json (last): the corpus is then ready."""
    count, part_record = agreed_part_record(output, count)
    settings = UnitSettings(**part_record["settings"])
    if plan is not None and plan.fingerprint() != part_record["plan"]:
        raise DataError(f"the inputs differ from those the parts of {output} tokenized; give --merge the same "
                        "--input and options (or none), or re-run the parts")
    tok = load_tokenizer(output / TOKENIZER_FILE)
    if tokenizer_hash(tok) != settings.tokenizer_sha256:
        raise DataError(f"{output / TOKENIZER_FILE} is not the tokenizer the parts used; re-run the parts with it")
    manifest = Manifest(vocab_size=tok.get_vocab_size(), tokenizer_sha256=settings.tokenizer_sha256,
                        eos_id=settings.eos_id, bos_id=settings.bos_id,
                        mask_id=mask_token_id(output / TOKENIZER_FILE, tok),
                        tokenizer_side_files=present_side_files(output), dtype=token_dtype(tok.get_vocab_size()).name,
                        splits={split: [] for split in SPLITS}, text_field=settings.text_field,
                        val_fraction=settings.val_fraction, shard_tokens=settings.shard_tokens,
                        unit_bytes=part_record["unit_bytes"], units=part_record["units"])
    for unit_index in range(part_record["units"]):
        for split, rows in unit_shards(output, unit_index, count, settings).items():
            manifest.splits[split].extend(ShardInfo(s["path"], s["tokens"], s["documents"], s["sha256"]) for s in rows)
    if not manifest.splits["train"]:
        raise DataError(f"every document of {output} went to validation; add input or lower --val-fraction")
    remove_stale_files(output, manifest, count)
    manifest.save(output)
    for split, shards in manifest.splits.items():
        log(f"{split}: {sum(s.documents for s in shards):,} documents, {manifest.tokens(split):,} tokens "
            f"in {len(shards)} shards")
    log(f"wrote {output / MANIFEST}")
    return manifest


def unit_shards(output: Path, unit_index: int, count: int, settings: UnitSettings) -> dict[str, list[dict]]:
    """A finished unit's shards per split, checked present with their recorded size."""
    redo = f"re-run --part {unit_index % count}/{count}, then --merge"
    path = record_path(output, unit_index)
    if not path.is_file():
        raise DataError(f"unit {unit_index} of {output} is not finished ({path} is missing); {redo}")
    record = json.loads(path.read_text())
    if record["settings"] != asdict(settings):
        raise DataError(f"unit {unit_index} of {output} was prepared with other options than its part; {redo}")
    for shard in recorded_shards(record):
        shard_path = output / shard["path"]
        if not shard_path.is_file() or shard_path.stat().st_size != shard["bytes"]:
            raise DataError(f"shard {shard_path} of unit {unit_index} is missing or damaged; {redo}")
    return record["shards"]


def remove_stale_files(output: Path, manifest: Manifest, count: int) -> None:
    """Shards, records and temporary files that earlier runs with other inputs or options left behind."""
    listed = {s.path for shards in manifest.splits.values() for s in shards}
    assert manifest.units is not None  # merge's manifest records its units
    for path in output.iterdir():
        if (SHARD_NAME.match(path.name) and path.name not in listed) or path.name.endswith(".tmp"):
            path.unlink()
    for path in (output / RECORDS).iterdir():
        unit = re.fullmatch(r"unit-(\d+)\.json", path.name)
        part = PART_RECORD.match(path.name)
        if (unit and int(unit[1]) >= manifest.units) or (part and int(part[2]) != count) or path.name.endswith(".tmp"):
            path.unlink()
