"""The observations a scaling law is fitted to: (N, D, C, final loss) per training run, read from
megallm run folders or from a CSV table.

Conventions (Chinchilla's, Hoffmann et al. 2022): N is the total parameter count, embeddings
included (megallm.model.flops.parameter_count, the padded vocabulary as built); D the training
tokens; C the training FLOPs. For a megallm run C = flops_per_token(model, seq_len) x D (PaLM's
count: 6 FLOPs per matmul parameter per token plus attention), not 6ND. A CSV gives C in a compute
column (an IsoFLOP study's `budget`: approach 2 groups by it, even where 6ND strays from it, as
in tables whose runs round their steps) or C = 6ND is computed, and D = C / (6N) where it has no
token column.

Each point is one training run: rows (or run folders) with the same N and D are refused in one
line, or averaged into one point with `duplicates="mean"` (a table holding each run twice, say
as a loss and as exp(loss), would otherwise fit nonsense, and a run counted twice narrows the
bootstrap intervals it should not).

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
from typing import Callable, Optional, Sequence

import numpy as np
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from megallm.config import RunConfig
from megallm.config.compose import config_from_yaml
from megallm.data.shards import MANIFEST as MANIFEST_FILE
from megallm.errors import ConfigError, DataError, UsageError
from megallm.model.flops import flops_per_token, parameter_count
from megallm.run_layout import METRICS_FILE, RUN_CONFIG_FILE, is_run_folder

# Model sizes whose parameter counts differ by less than this fraction are one size: points read
# off a published figure (the Chinchilla CSV) scatter by a fraction of a percent around each size.
SAME_SIZE_TOLERANCE = 0.005

# CSV columns: each quantity's accepted names (any case; the first match wins): Epoch AI's, single
# letters, and the usual spellings elsewhere (an IsoFLOP study's compute level is its `budget`).
CSV_COLUMNS = {"N": ("Model Size", "N", "params", "parameters", "n_params", "num_params", "model_size"),
               "C": ("Training FLOP", "C", "FLOPs", "compute", "training_flops", "training_flop", "budget",
                     "compute_budget", "flops_budget", "isoflop"),
               "D": ("D", "tokens", "training_tokens", "n_tokens", "num_tokens"),
               "loss": ("loss", "final_loss", "val_loss", "validation_loss", "eval_loss")}
NAME_COLUMNS = ("name", "run")  # optional: a row's name in the holdout table (else FILE:LINE)
# Rows whose N and D agree to this relative precision are one run: far below the step between two runs
# of a study, far above the rounding of a value written to text and read back, or computed twice.
SAME_RUN_RTOL = 1e-9
DUPLICATES = ("refuse", "mean")


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
    compute_column: Optional[str] = None  # the CSV column C was read from; None: C = 6ND, or a run's count

    def __len__(self) -> int:
        return len(self.names)

    def take(self, index: np.ndarray) -> Points:
        index = np.asarray(index, dtype=int)
        return Points(tuple(self.names[i] for i in index), self.n[index], self.d[index], self.c[index],
                      self.loss[index], self.source, self.vocab_size, self.compute_column)

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

    def same_runs(self) -> list[np.ndarray]:
        """Indices of the points that share N and D (SAME_RUN_RTOL), for each (N, D) held more than once,
        in the order of their first points."""
        keys = np.round(np.stack([np.log(self.n), np.log(self.d)], axis=1) / SAME_RUN_RTOL)
        _, first, inverse, counts = np.unique(keys, axis=0, return_index=True, return_inverse=True,
                                              return_counts=True)
        inverse = inverse.ravel()
        return [np.flatnonzero(inverse == k) for k in np.argsort(first) if counts[k] > 1]

    def averaged(self, groups: list[np.ndarray]) -> Points:
        """One point per group of `same_runs`: the first point's name, N and D, the geometric mean of C and
        the mean of the losses; the other points as they are."""
        merged = {int(g[0]): g for g in groups}
        dropped = {int(i) for g in groups for i in g[1:]}
        keep = [i for i in range(len(self)) if i not in dropped]
        c = np.array([geometric_mean(self.c[merged[i]]) if i in merged else self.c[i] for i in keep])
        loss = np.array([np.mean(self.loss[merged[i]]) if i in merged else self.loss[i] for i in keep])
        return Points(tuple(self.names[i] for i in keep), self.n[keep], self.d[keep], c, loss, self.source,
                      self.vocab_size, self.compute_column)


def geometric_mean(values: np.ndarray) -> float:
    """The geometric mean, taken relative to the first value: exact where all are equal (a budget's C)."""
    return float(values[0] * np.exp(np.mean(np.log(values / values[0]))))


def resolve_same_runs(points: Points, duplicates: str, where: Callable[[int], str],
                      differ: Callable[[int, int], list[tuple[str, str, str]]], note: Callable[[str], None]) -> Points:
    """These points with no (N, D) twice: a DataError naming the first repeat (`duplicates="refuse"`), or the
    repeats averaged with one note ("mean"). `where(i)` names point i (FILE:LINE or a run folder),
    `differ(i, j)` lists the other columns in which points i and j differ, as (name, value i, value j)."""
    if duplicates not in DUPLICATES:
        raise UsageError(f"--duplicates must be one of {', '.join(DUPLICATES)}, got {duplicates!r}")
    groups = points.same_runs()
    if not groups:
        return points
    repeats = sum(len(g) for g in groups)
    first = groups[0]
    i, j = int(first[0]), int(first[1])
    if duplicates == "mean":
        merged = points.averaged(groups)
        note(f"note: {len(groups)} (N, D) pairs are held by {repeats} {_unit(points)} (first: {where(i)} and "
             f"{where(j)}); each pair's losses averaged into one point (--duplicates mean): {len(merged)} points")
        return merged
    columns = differ(i, j)
    losses = ", ".join(f"{points.loss[k]:.6g}" for k in first[:4]) + (", ..." if len(first) > 4 else "")
    shown = ", ".join(f"{name!r} ({a!r} vs {b!r})" for name, a, b in columns[:2])
    how = f", and differ in {shown}" if columns else ""
    if columns:
        name, value, _ = columns[0]
        keep = f"keep the rows of one {name!r} (--where {name}={value})"
    else:
        keep = f"keep one of each run's {_unit(points)}"
    raise DataError(f"{where(i)} and {where(j)} hold the same run (N {points.n[i]:.6g}, D {points.d[i]:.6g}) with "
                    f"losses {losses}{how}; {len(groups)} (N, D) pairs are held by {repeats} {_unit(points)}, and a "
                    f"scaling law takes one loss per run: {keep}, or pass --duplicates mean to average each run's "
                    "losses")


def _unit(points: Points) -> str:
    return "run folders" if points.source == "runs" else "rows"


# ---- CSV ----------------------------------------------------------------------------------------------
def read_table(path: Path, expected_rows: str) -> list[list[str]]:
    """The rows of the CSV `path` (header first); DataError in one line where it cannot be read or is empty
    (`expected_rows` says what its rows should be)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not rows:
        raise DataError(f"{path} is empty; expected a header row and {expected_rows}")
    return rows


def read_csv(path: Path, duplicates: str = "refuse", note: Callable[[str], None] = print,
             where: Sequence[str] = ()) -> Points:
    """Points from a CSV with columns for N, C (or D), loss; see CSV_COLUMNS. `where` keeps only the rows
    whose column has a value ("COLUMN=VALUE" each: one experiment of a table holding several). Rows of the
    same (N, D): see `resolve_same_runs`."""
    rows = read_table(path, "one row per training run")
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
    lines = _selected_lines(path, rows, header, where)
    columns = {key: column for key, column in found.items() if column is not None}
    values: dict[str, list[float]] = {key: [] for key in columns}
    names = []
    for line in lines:
        row = rows[line - 1]
        for key, column in columns.items():
            cell = _cell(row, column)
            try:
                value = float(cell)
            except ValueError:
                value = float("nan")
            if not np.isfinite(value) or value <= 0:
                raise DataError(f"{path}:{line}: column {header[column]!r} must hold a positive number, got {cell!r}")
            values[key].append(value)
        named = _cell(row, name_column) if name_column is not None else ""
        names.append(named or f"{path.name}:{line}")
    n, loss = np.array(values["N"]), np.array(values["loss"])
    d = np.array(values["D"]) if "D" in values else None
    if "C" in values:
        c = np.array(values["C"])
    else:
        assert d is not None  # a table without C has D (the missing columns' check above)
        c = 6.0 * n * d
    compute_column = header[found["C"]] if found["C"] is not None else None
    points = Points(tuple(names), n, d if d is not None else c / (6.0 * n), c, loss, source="csv",
                    compute_column=compute_column)
    used = {column for column in (*found.values(), name_column) if column is not None}

    def differ(i: int, j: int) -> list[tuple[str, str, str]]:
        """The other columns in which rows i and j differ (a table holding each run as two kinds of loss)."""
        first, second = rows[lines[i] - 1], rows[lines[j] - 1]
        cells = [(header[k], _cell(first, k), _cell(second, k)) for k in range(len(header)) if k not in used]
        return [cell for cell in cells if cell[1] != cell[2]]

    return resolve_same_runs(points, duplicates, lambda i: f"{path}:{lines[i]}", differ, note)


def _selected_lines(path: Path, rows: list[list[str]], header: list[str], where: Sequence[str]) -> list[int]:
    """The numbers of the lines holding a row (not blank) that every COLUMN=VALUE of `where` keeps."""
    lines = [line for line, row in enumerate(rows[1:], start=2) if any(cell.strip() for cell in row)]
    for condition in where:
        column, _, value = condition.partition("=")
        if not _ or column.strip() not in header:
            raise UsageError(f"--where {condition!r}: expected COLUMN=VALUE with COLUMN one of "
                             f"{', '.join(repr(h) for h in header)}")
        k = header.index(column.strip())
        kept = [line for line in lines if _cell(rows[line - 1], k) == value.strip()]
        if not kept:
            seen = sorted({_cell(rows[line - 1], k) for line in lines})
            raise UsageError(f"--where {condition!r} keeps none of the {len(lines)} rows of {path}; column {column!r} "
                             f"holds {', '.join(repr(v) for v in seen[:8])}{', ...' if len(seen) > 8 else ''}")
        lines = kept
    if not lines:
        raise DataError(f"{path} has a header but no rows")
    return lines


def _cell(row: list[str], column: int) -> str:
    return row[column].strip() if column < len(row) else ""


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


def read_runs(root: Path, note: Callable[[str], None] = print, duplicates: str = "refuse") -> Points:
    """Points of the finished runs under `root` (searched recursively); each unfinished run is left
    out with one `note`. Runs of the same (N, D), as two seeds: see `resolve_same_runs`."""
    runs = []
    folders = run_folders(root)
    for folder in folders:
        run = read_run(folder, run_name(root, folder), note)
        if run is not None:
            runs.append(run)
    if not runs:
        raise DataError(f"none of the {len(folders)} run(s) under {root} is finished (an eval record at its last "
                        "step); nothing to fit")
    vocab = Counter(r.vocab_size for r in runs).most_common(1)[0][0]
    points = Points(tuple(r.name for r in runs), np.array([float(r.params) for r in runs]),
                    np.array([r.tokens for r in runs]), np.array([r.flops for r in runs]),
                    np.array([r.loss for r in runs]), source="runs", vocab_size=vocab)
    return resolve_same_runs(points, duplicates, lambda i: str(root / runs[i].name), lambda i, j: [], note)


def run_folders(root: Path) -> list[Path]:
    """The run folders under `root` (it included), sorted; a one-line error where there are none."""
    if not root.is_dir():
        raise UsageError(f"{root} is neither a CSV file nor a folder of runs")
    folders = sorted({p.parent for p in root.rglob(RUN_CONFIG_FILE) if is_run_folder(p.parent)})
    if not folders:
        raise DataError(f"no run folders under {root}: none holds both {RUN_CONFIG_FILE} and {METRICS_FILE}")
    return folders


def run_name(root: Path, folder: Path) -> str:
    """A run's name: its folder relative to `root` (the root's own name when it is the run)."""
    return folder.relative_to(root).as_posix() if folder != root else root.name


def run_config(folder: Path) -> RunConfig:
    """The run's resolved config (its config.yaml); a one-line ConfigError where it is not one."""
    config_path = folder / RUN_CONFIG_FILE
    try:
        cfg, _ = config_from_yaml(config_path.read_text())
    except (OSError, OmegaConfBaseException, YAMLError, ValueError) as exc:
        first = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{config_path} is not a megallm run config: {first}") from exc
    return cfg


def read_run(folder: Path, name: str, note: Callable[[str], None] = print) -> Optional[Run]:
    """The run in `folder`, or None (with a note) when it is not finished."""
    config_path = folder / RUN_CONFIG_FILE
    cfg = run_config(folder)
    model, steps = cfg.model, cfg.train.steps
    if model.vocab_size is None:
        model.vocab_size = _corpus_vocab(config_path, Path(cfg.data.path))
    records = read_metrics(folder / METRICS_FILE)[0]
    final = final_eval(folder, name, steps, note)
    if final is None:
        return None
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


def final_eval(folder: Path, name: str, steps: int, note: Callable[[str], None] = print) -> Optional[dict]:
    """The eval record at step `steps` of the run in `folder` (it is finished), or None with a note saying
    why it is left out (not finished, or no eval at its last step). A last line cut off after it is noted."""
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
    return final


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


def read_points(path: Path, note: Callable[[str], None] = print, duplicates: str = "refuse",
                where: Sequence[str] = ()) -> Points:
    """Points from a CSV file (`where`: see read_csv) or a folder of runs."""
    if not path.exists():
        raise UsageError(f"{path} does not exist; give a CSV file or a folder of runs")
    if path.is_file():
        return read_csv(path, duplicates, note, where)
    if where:
        raise UsageError(f"--where selects rows of a CSV; {path} is a folder of runs")
    return read_runs(path, note, duplicates)
