"""The files of a run folder (`run_dir`): its config, metrics, checkpoints and sample traces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megallm.checkpoint.state import CHECKPOINTS_DIR
from megallm.config import RunConfig
from megallm.files import METRICS_FILE, RUN_CONFIG_FILE

SAMPLES_DIR = "samples"  # data.trace_samples: dp_rank_RRRRR.jsonl


@dataclass(frozen=True)
class RunFolder:
    root: Path
    checkpoints: Path  # checkpoint.dir, or <root>/checkpoints

    @classmethod
    def of(cls, cfg: RunConfig) -> RunFolder:
        root = Path(cfg.run_dir)
        return cls(root, Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else root / CHECKPOINTS_DIR)

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    def sample_trace(self, dp_rank: int) -> Path:
        return self.root / SAMPLES_DIR / f"dp_rank_{dp_rank:05d}.jsonl"

    def write_config(self, config_yaml: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / RUN_CONFIG_FILE).write_text(config_yaml)
