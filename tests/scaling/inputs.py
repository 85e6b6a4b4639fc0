"""Inputs of the scaling-law tests: the Chinchilla CSV and the IsoFLOP tables as published (tests/fixtures/),
tables of some of their rows, synthetic points of a known law, fake run folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

import numpy as np

from megallm.scaling.parametric import Law
from megallm.scaling.points import Points

CHINCHILLA_CSV = Path(__file__).resolve().parents[1] / "fixtures" / "chinchilla" / "svg_extracted_data.csv"
ISOFLOPS = Path(__file__).resolve().parents[1] / "fixtures" / "isoflops"
LLAMA3 = ISOFLOPS / "llama_3.csv"  # each point twice: as raw_loss and as exp_loss (column `condition`)
# Hoffmann et al.'s published law (their eq. 10): a = beta / (alpha + beta) = 0.4516.
HOFFMANN_LAW = Law(A=406.4, B=410.7, E=1.69, alpha=0.34, beta=0.28)


def kept_rows(source: Path, keep) -> list[dict]:
    """The rows of the CSV `source` (as dicts) that `keep(row)` accepts."""
    with open(source, newline="") as f:
        return [row for row in csv.DictReader(f) if keep(row)]


def write_rows(path: Path, columns, rows: list[dict]) -> Path:
    """`rows` written as a CSV of `columns` (other keys left out)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def synthetic(law: Law, n, d) -> Points:
    """Noise-free points of `law` at every (n, d) pair given, C = 6ND."""
    n, d = np.asarray(n, float), np.asarray(d, float)
    return Points(tuple(f"run{i:03d}" for i in range(len(n))), n, d, 6 * n * d, law.loss(n, d), source="runs")


def write_run(folder: Path, config_yaml: str, records: list[dict], tail: Optional[str] = None) -> Path:
    """A run folder: config.yaml and metrics.jsonl of `records` (then `tail`, raw, if given)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config_yaml)
    text = "".join(json.dumps(r) + "\n" for r in records)
    (folder / "metrics.jsonl").write_text(text + (tail or ""))
    return folder


def run_records(steps: int, tokens_per_step: int, val_loss: float, last: Optional[int] = None,
                eval_tokens: bool = True) -> list[dict]:
    """Train records every 5 steps and an eval at the end (`last`: stop there, unfinished)."""
    last = steps if last is None else last
    records = [{"kind": "train", "step": s, "total_steps": steps, "loss": val_loss + 1.0 / s,
                "tokens_seen": s * tokens_per_step} for s in range(5, last + 1, 5)]
    if last == steps:
        final = {"kind": "eval", "step": steps, "val_loss": val_loss, "val_ppl": float(np.exp(val_loss))}
        if eval_tokens:
            final["tokens_seen"] = steps * tokens_per_step
        records.append(final)
    return records
