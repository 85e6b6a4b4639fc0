"""The map of a run folder (`run_dir`): the name of every file and folder a run writes there, and
where its checkpoints are.

    <run_dir>/config.yaml          the resolved config (each checkpoint holds a copy too)
    <run_dir>/metrics.jsonl        every logged record, one JSON object per line
    <run_dir>/checkpoints/         step_NNNNNNNN checkpoints, unless checkpoint.dir puts them elsewhere
    <run_dir>/wandb_run_id         the W&B run that the folder's jobs, resumed or requeued, continue
    <run_dir>/.megallm.lock        held by the job training in the folder (checkpoint.dir has its own)
    <run_dir>/samples/             data.trace_samples: dp_rank_RRRRR.jsonl

A sweep's folder (launch/sweep.py) holds its plan, sweep.json, and one run folder per run.

The run writes through `RunPaths.of_settings(run_dir, checkpoint.dir)` (megallm.train.run_folder);
every tool that is handed a run folder finds its checkpoints through `RunPaths.of_folder`, which
reads checkpoint.dir from the folder's config.yaml, so a run that kept its checkpoints elsewhere
exports, evaluates, fine-tunes and resumes like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

RUN_CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
WANDB_RUN_ID_FILE = "wandb_run_id"
LOCK_FILE = ".megallm.lock"
SAMPLES_DIR = "samples"
SWEEP_PLAN_FILE = "sweep.json"  # in a sweep's folder: every run, its overrides, branch point and compute


@dataclass(frozen=True)
class RunPaths:
    root: Path
    checkpoints: Path  # checkpoint.dir, or <root>/checkpoints

    @classmethod
    def of_settings(cls, run_dir: str | Path, checkpoint_dir: Optional[str | Path] = None) -> RunPaths:
        """The folders of a run configured with `run_dir` and `checkpoint.dir` (None or empty: the default)."""
        root = Path(run_dir)
        return cls(root, Path(checkpoint_dir) if checkpoint_dir else root / CHECKPOINTS_DIR)

    @classmethod
    def of_folder(cls, run: Path) -> RunPaths:
        """The folders of the existing run folder `run`, its checkpoint.dir read from its config.yaml.
        A relative checkpoint.dir is taken from where the run started: `run` less the config's
        run_dir, else the current folder. A folder without a readable config.yaml gets the default."""
        run = Path(run)
        configured = _configured_checkpoint_dir(run)
        return cls(run, configured if configured is not None else run / CHECKPOINTS_DIR)

    @property
    def keeps_checkpoints_elsewhere(self) -> bool:
        """Whether checkpoint.dir moved the checkpoints out of <root>/checkpoints."""
        return self.checkpoints.resolve() not in (self.root.resolve(), (self.root / CHECKPOINTS_DIR).resolve())

    @property
    def config(self) -> Path:
        return self.root / RUN_CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def wandb_run_id(self) -> Path:
        return self.root / WANDB_RUN_ID_FILE

    def sample_trace(self, dp_rank: int) -> Path:
        return self.root / SAMPLES_DIR / f"dp_rank_{dp_rank:05d}.jsonl"


def lock_file(folder: Path) -> Path:
    """The lock file of a run folder, or of a checkpoint.dir outside it."""
    return Path(folder) / LOCK_FILE


def is_run_folder(path: Path) -> bool:
    """Whether `path` holds a run's config.yaml and metrics.jsonl (a finished or running run)."""
    return (Path(path) / RUN_CONFIG_FILE).is_file() and (Path(path) / METRICS_FILE).is_file()


def _configured_checkpoint_dir(run: Path) -> Optional[Path]:
    try:
        config = yaml.safe_load((run / RUN_CONFIG_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    section = config.get("checkpoint") if isinstance(config, dict) else None
    configured = section.get("dir") if isinstance(section, dict) else None
    if not configured:
        return None
    configured = Path(str(configured))
    if configured.is_absolute():
        return configured
    full, run_dir = run.resolve(), Path(str(config.get("run_dir") or ""))
    started = Path.cwd()
    if run_dir.parts and not run_dir.is_absolute() and full.parts[-len(run_dir.parts):] == run_dir.parts:
        started = Path(*full.parts[:-len(run_dir.parts)])
    return started / configured
