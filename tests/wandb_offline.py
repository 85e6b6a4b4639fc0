"""What wandb (0.31) writes offline, read back: the records of an offline run's `run-<id>.wandb` file and
the run they describe (config, history rows, metric definitions). Used by the W&B tests of training
(tests/train/test_wandb.py) and of tools/evaluate.py (tests/evaluation/test_evaluate_cli.py).

W&B's offline folder (`offline-run-<time>-<id>/run-<id>.wandb`) holds no config.yaml or summary file,
only the protobuf records that `wandb sync` uploads, in a LevelDB-style log of
`wandb_internal_pb2.Record`s; wandb 0.31 ships no reader of its own.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

BLOCK = 32768  # the log's block; a record's header is crc32 (uint32), length (uint16), type (uint8)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    """The `wandb_internal_pb2.Record`s of a `run-<id>.wandb` file, each chunk's checksum verified."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]  # the file header: ident, magic (uint16), version (uint8)
    found, pos, pieces = [], 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's last bytes that cannot hold a header are zero padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad checksum at byte {pos}"
        pos, pieces = pos + 7 + length, pieces + chunk
        if kind in (FULL, LAST):
            record = Record()
            record.ParseFromString(pieces)
            found.append(record)
            pieces = b""
    return found


@dataclass
class OfflineRun:
    """What one job wrote to W&B: its run record, config, history rows and metric definitions."""

    run_id: str = ""
    name: str = ""
    project: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    metrics: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: Optional[int] = None  # None: the job never finished its run (killed)

    @classmethod
    def read(cls, folder: Path) -> OfflineRun:
        (path,) = folder.glob("run-*.wandb")
        run = cls()
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                r = record.run
                run.run_id, run.name, run.project, run.group, run.tags = (r.run_id, r.display_name, r.project,
                                                                          r.run_group, list(r.tags))
                run.config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
            elif kind == "config":
                run.config.update({u.key: json.loads(u.value_json) for u in record.config.update})
            elif kind == "history":
                items = record.history.item
                run.rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in items})
            elif kind == "metric":
                run.metrics.append(record.metric)
            elif kind == "summary":
                run.summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json)
                                    for u in record.summary.update})
            elif kind == "exit":
                run.exit_code = record.exit.exit_code
        return run

    def rows_with(self, key: str) -> list[dict]:
        return [row for row in self.rows if key in row]


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """The offline W&B folders of `run_dir`, in the order the jobs started (their names begin with the time)."""
    return [OfflineRun.read(folder) for folder in sorted((run_dir / "wandb").glob("offline-run-*"))]
