"""Where records go: the console and a JSONL file always, W&B when enabled (rank 0 only).

Each logger writes the records the trainer hands to `log_metrics`: flat dicts with
`time`, `step`, `kind` ("train", "eval") and numbers.
"""

from __future__ import annotations

import json
import math
import secrets
import string
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, cast

from omegaconf import OmegaConf

from megallm.config import RunConfig, WandbConfig, wandb_mode
from megallm.files import atomic_write_text
from megallm.metrics.format import format_console
from megallm.model.flops import flops_per_token, parameter_count
from megallm.parallel.distributed import DistContext
from megallm.run_layout import RunPaths
from megallm.train.callbacks.base import Callback

if TYPE_CHECKING:  # the trainer imports the callbacks, not the other way round
    from megallm.train.trainer import Trainer


class ConsoleLogger(Callback):
    def log_metrics(self, trainer: Trainer, record: dict) -> None:
        print(format_console(record), file=sys.stdout, flush=True)

    def close(self, trainer: Trainer) -> None:
        sys.stdout.flush()


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

    def close(self, trainer: Trainer) -> None:
        self._file.close()  # flushes: every record logged before an exception is in the file


WANDB_AXES = ("step", "tokens_seen", "flops_seen")  # unprefixed in every W&B row: the x-axes of every metric


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run of `run_dir`: the id kept in its wandb_run_id file (megallm.run_layout), else a new one written there
    (atomically: a job killed meanwhile leaves no half id). Delete the file to start a new W&B run."""
    path = RunPaths.of_settings(run_dir).wandb_run_id
    if path.is_file() and (run_id := path.read_text().strip()):
        return run_id
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # as W&B's own
    atomic_write_text(path, run_id + "\n")
    return run_id


def wandb_config(cfg: RunConfig, ctx: DistContext, precision: str) -> dict:
    """A run's W&B config: the resolved RunConfig as dotted keys (`optim.lr`, `model.hidden_size`: W&B
    filters and groups runs by them), the parameter counts, training FLOPs per token, the process
    layout and the precision trained in."""
    params = parameter_count(cfg.model)
    dims = ctx.dims
    resolved = cast(dict, OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True))
    return {**_dotted(resolved),
            "params.total": params.total, "params.non_embedding": params.non_embedding,
            "flops_per_token": flops_per_token(cfg.model, cfg.train.seq_len), "layout.world_size": ctx.world_size,
            "layout.dp": dims.dp, "layout.tp": dims.tp, "layout.pp": dims.pp, "layout.zero_stage": dims.zero_stage,
            "precision": precision}


def _dotted(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class WandbLogger(Callback):
    """The W&B run of `run_dir` (`cfg` resolved: WandbConfig.resolved), in `<run_dir>/wandb/`; metrics
    logged as `<kind>/<name>`, with `step`, `tokens_seen` and `flops_seen` in every row as x-axes
    (`step` the default one). Entries that are None (MFU where the device's peak is unknown) are
    left out of the row.

    A job that resumes in the same run folder continues the same W&B run (wandb_run_id). It
    trains again the steps after its checkpoint, which W&B may hold already: rows are not
    logged at an explicit W&B step (W&B ignores a row whose step is below the run's current
    one) but plot against the trainer's `step`, so they land at their true step. In offline
    mode each job writes its own `offline-run-<time>-<id>` folder, all with the run's id, its
    own `_step` counting from 0 again: `wandb sync` them in time order.
    """

    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict):
        import wandb  # deferred: ~1 s to import, and only runs with W&B enabled need it

        # mode given explicitly, as resolved from config and environment: it overrides W&B's own settings
        self._run = wandb.init(id=wandb_run_id(run_dir), resume="allow",
                               mode=wandb_mode(cfg.mode or ""),  # checked before start (config.checks)
                               project=cfg.project,
                               entity=cfg.entity, name=cfg.name or run_dir.name, group=cfg.group,
                               tags=cfg.tags or None, notes=cfg.notes, dir=str(run_dir), config=config,
                               allow_val_change=True)  # an extended run changes train.steps, a resumed one stop_at_step
        for axis in WANDB_AXES:
            self._run.define_metric(axis)
        self._kinds: set[str] = set()
        self._failure: Optional[BaseException] = None

    def log_metrics(self, trainer: Trainer, record: dict) -> None:
        kind = record["kind"]
        if kind not in self._kinds:
            self._run.define_metric(f"{kind}/*", step_metric="step")
            self._kinds.add(kind)
        self._run.log({k if k in WANDB_AXES else f"{kind}/{k}": v for k, v in record.items()
                       if k not in ("kind", "time") and v is not None})

    def on_error(self, trainer: Trainer, error: BaseException) -> None:
        self._failure = error

    def close(self, trainer: Trainer) -> None:
        """Finish the W&B run: exit code 0 (or the run's own, 75 when preempted), or 1 with the error's
        one line in its summary after an exception, so W&B shows the run failed."""
        if self._failure is not None:
            self._run.summary["error"] = f"{type(self._failure).__name__}: {self._failure}".splitlines()[0]
            self._run.finish(exit_code=1)
        else:
            self._run.finish(exit_code=trainer.exit_code)
