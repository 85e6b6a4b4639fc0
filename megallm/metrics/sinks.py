"""Metric sinks: a JSONL file always, the console and W&B (offline by default) on rank 0.

A record is a flat dict with `step`, a `kind` ("train", "eval", ...) and numbers. Only
rank 0 builds sinks; other ranks get an empty `MetricLogger` and stay silent.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from megallm.config import WandbConfig


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def format_console(record: dict) -> str:
    kind, step = record["kind"], record["step"]
    if kind == "eval":
        return f"eval  step {step} | val_loss {record['val_loss']:.4f} | val_ppl {record['val_ppl']:.2f}"
    parts = [f"step {step}/{record['total_steps']}", f"loss {record['loss']:.4f}", f"lr {record['lr']:.2e}",
             f"grad_norm {record['grad_norm']:.3f}", f"{record['tokens_per_s']:,.0f} tok/s"]
    if record.get("mfu") is not None:
        parts.append(f"mfu {100 * record['mfu']:.1f}%")
    if record.get("epoch") is not None:
        parts.append(f"epoch {record['epoch']:.2f}")
    if record.get("skipped_shards"):
        parts.append(f"skipped shards {record['skipped_shards']:.0f}")
    if record.get("peak_mem_gib") is not None:
        parts.append(f"peak mem {record['peak_mem_gib']:.2f} GiB")
    parts.append(f"eta {format_duration(record['eta_s'])}")
    return " | ".join(parts)


class JsonlSink:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1)  # line-buffered: a crash loses at most a line

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


class ConsoleSink:
    def write(self, record: dict) -> None:
        print(format_console(record), file=sys.stdout, flush=True)

    def close(self) -> None:
        pass


class WandbSink:
    def __init__(self, cfg: WandbConfig, run_dir: Path, run_name: str, config: dict):
        import wandb

        self._run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(run_dir),
                               name=run_name, config=config, resume="allow")

    def write(self, record: dict) -> None:
        kind = record["kind"]
        self._run.log({f"{kind}/{k}": v for k, v in record.items() if k not in ("step", "kind")},
                      step=record["step"])

    def close(self) -> None:
        self._run.finish()


class MetricLogger:
    """Fans a record out to every sink, stamping it with wall-clock time."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def log(self, record: dict) -> None:
        record = {"time": round(time.time(), 3), **record}
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
