"""Where evaluation results go: one JSON file, a table on the console, and W&B when asked.

The results are one dict (megallm.cli.evaluate builds it):

    {"model": ..., "tokenizer": ..., "created": ISO time, "versions": {package: version},
     "settings": {the command line's options},
     "tasks": [{"task", "file", "kind", "k", "method" (the demonstrations'), "seed", "demo_pool",
                "metrics": {name: number, name_stderr: its standard error or null, ...},
                "counts": {"examples", "pool", ...}, "seconds",
                "samples": [one per example: {"id", "demonstrations", ...}] (megallm.evaluation.fewshot)}, ...],
     "perplexity": [{"source", "mode", "seq_len", "stride", "documents", "tokens", "bytes", "nll", "mean_nll",
                     "perplexity", "bits_per_byte", "byte_perplexity"}, ...]}

`write_results` writes it atomically (strict JSON: NaN becomes null); `format_table` gives one
row per (task, metric), its standard error beside the value ("-" where there is none: perplexity,
fewer than two examples); `log_wandb` logs the same to a W&B run, following megallm's conventions
(megallm.config.WandbConfig.resolved: a value from the WANDB_* environment, else offline
mode and project "megallm"): each number as `<task>/<metric>` (and `<task>/<metric>_stderr`) in one
row and the summary, the table as a W&B Table, the settings as the run's config.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Optional

from megallm.config import WandbConfig, wandb_mode
from megallm.errors import UsageError
from megallm.files import atomic_write_text

VERSIONED = ("megallm", "torch", "tokenizers", "transformers", "sacrebleu", "rouge-score", "bm25s", "scikit-learn")
# The numbers of a task that the table and W&B show (the JSON file has all).
HEADLINE = {"multiple_choice": ("accuracy", "accuracy_norm"),
            "generation": ("bleu", "rouge1", "rouge2", "rougeL", "exact_match")}
PERPLEXITY_COLUMNS = ("perplexity", "bits_per_byte", "byte_perplexity", "mean_nll")


def versions() -> dict[str, Optional[str]]:
    """Python's and the packages' versions (None where one is not installed)."""
    found: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def write_results(path: Path, results: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(_strict(results), indent=1, allow_nan=False) + "\n")
    return path


COLUMNS = ("task", "kind", "k", "demos", "n", "metric", "value", "stderr")


def rows(results: dict) -> list[dict]:
    """One row per reported number: task, kind, k, demos, n (examples, or predicted tokens), metric, value,
    stderr (None where there is none)."""
    out = []
    for task in results.get("tasks", []):
        for name in [m for m in HEADLINE.get(task["kind"], ()) if m in task["metrics"]]:
            out.append({"task": task["task"], "kind": task["kind"], "k": task["k"], "demos": task["method"],
                        "n": task["counts"]["examples"], "metric": name, "value": task["metrics"][name],
                        "stderr": task["metrics"].get(f"{name}_stderr")})
    for ppl in results.get("perplexity", []):
        for name in PERPLEXITY_COLUMNS:
            out.append({"task": f"perplexity:{Path(ppl['source'].split(', ')[0]).name}", "kind": ppl["mode"], "k": "",
                        "demos": "", "n": ppl["tokens"], "metric": name, "value": ppl[name], "stderr": None})
    return out


def format_table(results: dict) -> str:
    table = [list(COLUMNS)]
    table += [[str(r["task"]), str(r["kind"]), str(r["k"]), str(r["demos"]), f"{r['n']:,}", r["metric"],
               f"{r['value']:.4f}", "-" if r["stderr"] is None else f"{r['stderr']:.4f}"] for r in rows(results)]
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    right = {2, 4, 6, 7}
    return "\n".join("  ".join(cell.rjust(w) if c in right else cell.ljust(w)
                               for c, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in table)


def log_wandb(results: dict, folder: Path, environ: Optional[dict] = None) -> str:
    """Log `results` to a new W&B run under `folder`/wandb; returns the mode it ran in."""
    try:
        import wandb  # optional: only --wandb needs it
    except ImportError as exc:
        raise UsageError("--wandb needs the wandb package: pip install wandb") from exc
    cfg = WandbConfig(enabled=True).resolved(os.environ if environ is None else environ)
    mode = wandb_mode(cfg.mode or "")
    if mode is None:
        raise UsageError(f"WANDB_MODE must be offline, online or disabled, got {cfg.mode!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table_rows = rows(results)
    numbers = {f"{r['task']}/{r['metric']}": r["value"] for r in table_rows}
    numbers.update({f"{r['task']}/{r['metric']}_stderr": r["stderr"] for r in table_rows if r["stderr"] is not None})
    run = wandb.init(mode=mode, project=cfg.project, entity=cfg.entity, name=cfg.name, group=cfg.group,
                     tags=cfg.tags or None, notes=cfg.notes, dir=str(folder), job_type="evaluate",
                     config={"model": results["model"], **results.get("settings", {})})
    table = wandb.Table(columns=list(COLUMNS), data=[[str(r[c]) if c in ("k", "demos") else r[c] for c in COLUMNS]
                                                     for r in table_rows])
    run.log({**numbers, "results": table})
    run.summary.update(numbers)
    run.finish()
    return mode
