"""The observations a scaling law is fitted to: (N, D, C, final loss) per training run, read from
megallm run folders or from a CSV table.

Conventions (Chinchilla's, Hoffmann et al. 2022): N is the total parameter count, embeddings
included (megallm.model.flops.parameter_count, the padded vocabulary as built); D the training
tokens; C the training FLOPs. For a megallm run C = flops_per_token(model, seq_len) x D (PaLM's
count: 6 FLOPs per matmul parameter per token plus attention), not 6ND; a CSV gives C itself, and
D = C / (6N) where it has no token column.

A run folder is any folder holding `config.yaml` (the resolved config) and `metrics.jsonl`. A run
is finished when it has an eval record at step `train.steps`; its final loss is that record's
`val_loss`. A WSD cool-down branch resumed from another run's checkpoint logs only from its
branch step on: only the final eval matters here, so that is fine.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from megallm.config.compose import config_from_yaml
from megallm.data.shards import MANIFEST as MANIFEST_FILE
from megallm.errors import ConfigError, DataError, UsageError
from megallm.files import METRICS_FILE, RUN_CONFIG_FILE
from megallm.model.flops import flops_per_token, parameter_count

# Model sizes whose parameter counts differ by less than this fraction are one size: points read
# off a published figure (the Chinchilla CSV) scatter by a fraction of a percent around each size.
SAME_SIZE_TOLERANCE = 0.005

# CSV columns: each quantity's accepted names (any case; the first match wins): Epoch AI's, single
# letters, and the usual spellings elsewhere.
CSV_COLUMNS = {"N": ("Model Size", "N", "params", "parameters", "n_params", "model_size"),
               "C": ("Training FLOP", "C", "FLOPs", "compute", "training_flops"),
               "D": ("D", "tokens", "training_tokens", "n_tokens"),
               "loss": ("loss", "final_loss", "val_loss")}
NAME_COLUMNS = ("name", "run")  # optional: a row's name in the holdout table (else FILE:LINE)


@dataclass(frozen=True)
class Points:
    """One point per finished run (or CSV row): arrays of equal length."""

    names: tuple[str, ...]  # run folder relative to the root, or `FILE:LINE` of a CSV row
    n: np.ndarray  # parameters (total, embeddings included)
    d: np.ndarray  # training tokens
    c: np.ndarray  # training FLOPs
    loss: np.ndarray  # final loss (a run's final val_loss)
    source: str  # "runs" or "csv"
    vocab_size: Optional[int] = None  # the runs' vocabulary (the most common one); None for a CSV

    def __len__(self) -> int:
        return len(self.names)

    def take(self, index: np.ndarray) -> Points:
        index = np.asarray(index, dtype=int)
        return Points(tuple(self.names[i] for i in index), self.n[index], self.d[index], self.c[index],
                      self.loss[index], self.source, self.vocab_size)

    def without_highest(self, count: int) -> Points:
        """These points less the `count` of highest loss (Epoch AI's outlier rule for the Chinchilla CSV)."""
        if count <= 0:
            return self
        if count >= len(self):
            raise UsageError(f"--drop-highest {count} would leave none of the {len(self)} points")
        keep = np.sort(np.argsort(self.loss, kind="stable")[:len(self) - count])
        return self.take(keep)

    def size_groups(self) -> list[np.ndarray]:
        """Indices of the points of each model size, smallest size first (SAME_SIZE_TOLERANCE apart)."""
        if not len(self):
            return []
        order = np.argsort(self.n, kind="stable")
        log_n = np.log(self.n[order])
        cuts = np.flatnonzero(np.diff(log_n) > np.log1p(SAME_SIZE_TOLERANCE)) + 1
        return [np.sort(group) for group in np.split(order, cuts)]


# ---- CSV ----------------------------------------------------------------------------------------------
def read_csv(path: Path) -> Points:
    """Points from a CSV with columns for N, C (or D), loss; see CSV_COLUMNS."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not rows:
        raise DataError(f"{path} is empty; expected a header row and one row per training run")
    header = [name.strip() for name in rows[0]]
    folded = [name.lower() for name in header]
    found = {key: next((folded.index(name.lower()) for name in names if name.lower() in folded), None)
             for key, names in CSV_COLUMNS.items()}
    name_column = next((folded.index(name) for name in NAME_COLUMNS if name in folded), None)
    missing = [key for key in ("N", "loss") if found[key] is None]
    if found["C"] is None and found["D"] is None:
        missing.append("C")
    if missing:
        wanted = "; ".join(f"{key}: {' or '.join(repr(n) for n in CSV_COLUMNS[key])}" for key in missing)
        raise DataError(f"{path} lacks the column(s) for {wanted} (in any case); its columns are "
                        f"{', '.join(repr(h) for h in header)}")
    values: dict[str, list[float]] = {key: [] for key, column in found.items() if column is not None}
    names = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        for key in values:
            column = found[key]
            cell = row[column].strip() if column < len(row) else ""
            try:
                value = float(cell)
            except ValueError:
                value = float("nan")
            if not np.isfinite(value) or value <= 0:
                raise DataError(f"{path}:{line}: column {header[column]!r} must hold a positive number, got {cell!r}")
            values[key].append(value)
        named = row[name_column].strip() if name_column is not None and name_column < len(row) else ""
        names.append(named or f"{path.name}:{line}")
    if not names:
        raise DataError(f"{path} has a header but no rows")
    n, loss = np.array(values["N"]), np.array(values["loss"])
    d = np.array(values["D"]) if "D" in values else None
    c = np.array(values["C"]) if "C" in values else 6.0 * n * d
    return Points(tuple(names), n, d if d is not None else c / (6.0 * n), c, loss, source="csv")


# ---- run folders --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """A finished run's numbers."""

    name: str
    params: int
    tokens: float
    flops: float
    loss: float
    vocab_size: int


def read_runs(root: Path, note: Callable[[str], None] = print) -> Points:
    """Points of the finished runs under `root` (searched recursively); each unfinished run is left
    out with one `note`."""
    if not root.is_dir():
        raise UsageError(f"{root} is neither a CSV file nor a folder of runs")
    folders = sorted({p.parent for p in root.rglob(RUN_CONFIG_FILE) if (p.parent / METRICS_FILE).is_file()})
    if not folders:
        raise DataError(f"no run folders under {root}: none holds both {RUN_CONFIG_FILE} and {METRICS_FILE}")
    runs = []
    for folder in folders:
        name = folder.relative_to(root).as_posix() if folder != root else root.name
        run = read_run(folder, name, note)
        if run is not None:
            runs.append(run)
    if not runs:
        raise DataError(f"none of the {len(folders)} run(s) under {root} is finished (an eval record at its last "
                        "step); nothing to fit")
    vocab = Counter(r.vocab_size for r in runs).most_common(1)[0][0]
    return Points(tuple(r.name for r in runs), np.array([float(r.params) for r in runs]),
                  np.array([r.tokens for r in runs]), np.array([r.flops for r in runs]),
                  np.array([r.loss for r in runs]), source="runs", vocab_size=vocab)


def read_run(folder: Path, name: str, note: Callable[[str], None] = print) -> Optional[Run]:
    """The run in `folder`, or None (with a note) when it is not finished."""
    config_path = folder / RUN_CONFIG_FILE
    try:
        cfg, _ = config_from_yaml(config_path.read_text())
    except (OSError, OmegaConfBaseException, YAMLError, ValueError) as exc:
        first = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{config_path} is not a megallm run config: {first}") from exc
    model, steps = cfg.model, cfg.train.steps
    if model.vocab_size is None:
        model.vocab_size = _corpus_vocab(config_path, Path(cfg.data.path))
    records, cut_line = read_metrics(folder / METRICS_FILE)
    final = next((r for r in records if r.get("kind") == "eval" and r.get("step") == steps), None)
    if final is None:
        last = max((r["step"] for r in records if isinstance(r.get("step"), int)), default=0)
        cut = f"; {METRICS_FILE}:{cut_line} is cut off mid-line" if cut_line else ""
        if last >= steps and cut_line is None:
            note(f"note: {name} has no eval record at its last step {steps} (train.eval_every=0?); left out")
        else:
            note(f"note: {name} is not finished (last step {last} of {steps}{cut}); left out")
        return None
    if cut_line is not None:
        note(f"note: {name}: {METRICS_FILE}:{cut_line} is cut off mid-line (after the final eval); ignored")
    loss = final.get("val_loss")
    if not isinstance(loss, (int, float)) or not np.isfinite(loss):
        raise DataError(f"{folder / METRICS_FILE}: the final eval record (step {steps}) has val_loss {loss!r}, "
                        "not a finite number")
    tokens = final.get("tokens_seen")
    if not isinstance(tokens, (int, float)):
        train = [r for r in records if r.get("kind") == "train" and isinstance(r.get("tokens_seen"), (int, float))]
        tokens = max(train, key=lambda r: r["step"])["tokens_seen"] if train else None
    if not tokens:
        tokens = steps * cfg.train.global_batch_tokens
    flops = flops_per_token(model, cfg.train.seq_len) * float(tokens)
    return Run(name, parameter_count(model).total, float(tokens), flops, float(loss), model.vocab_size)


def _corpus_vocab(config_path: Path, corpus: Path) -> int:
    """vocab_size of the run's corpus (data.path, relative to the working folder) for a null model.vocab_size."""
    manifest = corpus / MANIFEST_FILE
    try:
        vocab = json.loads(manifest.read_text()).get("vocab_size")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{config_path} has model.vocab_size null and its corpus manifest {manifest} cannot be read "
                          f"({type(exc).__name__}); run from the folder the run was started in, or set "
                          "model.vocab_size in that config.yaml") from exc
    if not isinstance(vocab, int) or vocab <= 0:
        raise ConfigError(f"{manifest} (the corpus of {config_path}) has no positive vocab_size, got {vocab!r}")
    return vocab


def read_metrics(path: Path) -> tuple[list[dict], Optional[int]]:
    """The records of a metrics.jsonl and the number of its last line if that one is cut off (a run that
    crashed while writing it), else None. A damaged line before the last is an error naming it."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    records, cut = [], None
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    for position, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if position == len(numbered) - 1:
                cut = number
                break
            raise DataError(f"{path}:{number} is not a JSON object ({exc}): the line is damaged or cut off; "
                            "repair or remove it") from exc
        records.append(record)
    return records, cut


def read_points(path: Path, note: Callable[[str], None] = print) -> Points:
    """Points from a CSV file or a folder of runs."""
    if not path.exists():
        raise UsageError(f"{path} does not exist; give a CSV file or a folder of runs")
    return read_csv(path) if path.is_file() else read_runs(path, note)
