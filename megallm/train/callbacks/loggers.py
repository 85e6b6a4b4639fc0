"""Where records go: the console and a JSONL file always, W&B when enabled (rank 0 only).

Each logger writes the records the trainer hands to `log_metrics`: flat dicts with
`time`, `step`, `kind` ("train", "eval") and numbers.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from megallm.config import WandbConfig
from megallm.metrics.format import format_console
from megallm.train.callbacks.base import Callback

if TYPE_CHECKING:  # the trainer imports the callbacks, not the other way round
    from megallm.train.trainer import Trainer


class ConsoleLogger(Callback):
    def log_metrics(self, trainer: Trainer, record: dict) -> None:
        print(format_console(record), file=sys.stdout, flush=True)


def strict_json(record: dict) -> str:
    """A record as one line of strict JSON: NaN and infinities (which JSON lacks) become null."""
    return json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()},
                      allow_nan=False)


class JsonlLogger(Callback):
    """Appends every record to `path` as strict JSON, line-buffered: a crash loses at most a line."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1)

    def log_metrics(self, trainer: Trainer, record: dict) -> None:
        self._file.write(strict_json(record) + "\n")

    def on_fit_end(self, trainer: Trainer) -> None:
        self._file.close()


class WandbLogger(Callback):
    """A W&B run in `run_dir` (offline by default: `wandb sync` uploads it later); metrics
    logged as `<kind>/<name>` against the step."""

    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict):
        import wandb  # deferred: ~1 s to import, and only runs with W&B enabled need it

        self._run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(run_dir),
                               name=run_dir.name, config=config, resume="allow")

    def log_metrics(self, trainer: Trainer, record: dict) -> None:
        kind = record["kind"]
        self._run.log({f"{kind}/{k}": v for k, v in record.items() if k not in ("step", "kind")},
                      step=record["step"])

    def on_fit_end(self, trainer: Trainer) -> None:
        self._run.finish()
