"""The observations a data-mixing law is fitted to: one trained mixture per row, its proportions over the
training domains and its validation loss on each evaluated domain.

A CSV holds, per row: an optional `name` (or `run`) column, the mixture as `r_<domain>` columns
(proportions: each row must sum to 1 within SUM_TOLERANCE, as published tables round them, and is then
normalised exactly) or as `weight_<domain>` columns (any non-negative weights, each row normalised to sum
1), and `loss_<domain>` columns, the validation loss on each evaluated domain. The evaluated domains need
not be the training domains (a held-out validation set is a domain with a loss and no proportion).

`mixtures_from_rows` does the checks on rows given as dictionaries, whatever they were read from; a reader
of a sweep's run folders (once `data.sources` exists) will hand it one dictionary per run.

Each mixture is one point: rows holding the same proportions (a published table that lists a run twice,
or two seeds) are refused in one line naming them, or averaged with `duplicates="mean"`, as
megallm.scaling.points does for the (N, D) of a scaling law.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from megallm.errors import DataError, UsageError
from megallm.scaling.points import DUPLICATES, NAME_COLUMNS, read_table

PROPORTION_PREFIX, WEIGHT_PREFIX, LOSS_PREFIX = "r_", "weight_", "loss_"
# r_ columns rounded to 2 decimals (as published tables give them) sum to within m x 0.005 of 1; a row
# further off is a mistake, not rounding.
SUM_TOLERANCE = 0.02
# Proportions that agree to this (absolute, after normalisation) are one mixture: far below any step between
# two mixtures of a sweep, far above a proportion's rounding when written as text and read back.
SAME_MIXTURE_ATOL = 1e-9


@dataclass(frozen=True)
class Mixtures:
    """One row per trained mixture: proportions (n, len(sources)) summing to 1, losses (n, len(domains))."""

    names: tuple[str, ...]
    sources: tuple[str, ...]  # the training domains (proportion columns)
    domains: tuple[str, ...]  # the evaluated domains (loss columns)
    proportions: np.ndarray
    losses: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def take(self, index) -> Mixtures:
        index = np.asarray(index, dtype=int)
        return Mixtures(tuple(self.names[i] for i in index), self.sources, self.domains, self.proportions[index],
                        self.losses[index])

    def split(self, held: Sequence[str]) -> tuple[Mixtures, Mixtures]:
        """(the mixtures not named in `held`, those named); a UsageError for a name not among them."""
        unknown = [name for name in held if name not in self.names]
        if unknown:
            shown = ", ".join(repr(n) for n in self.names[:8]) + (", ..." if len(self.names) > 8 else "")
            raise UsageError(f"--holdout {unknown[0]!r} names no mixture; the mixtures are {shown}")
        out = [i for i, name in enumerate(self.names) if name in held]
        return self.take([i for i in range(len(self)) if i not in out]), self.take(out)


def mixtures_from_rows(rows: Sequence[Mapping[str, str]], where: Callable[[int], str], duplicates: str = "refuse",
                       note: Callable[[str], None] = print) -> Mixtures:
    """Mixtures from rows (column -> cell text; all rows have the same columns). `where(i)` names row i in
    messages (FILE:LINE, or a run folder) and is its name where it has no name column."""
    if duplicates not in DUPLICATES:
        raise UsageError(f"--duplicates must be one of {', '.join(DUPLICATES)}, got {duplicates!r}")
    if not rows:
        raise DataError(f"{where(-1)} holds no rows; expected one row per trained mixture")
    columns = list(rows[0])
    prefix, sources = _proportion_columns(columns, where(-1))
    domains = [c[len(LOSS_PREFIX):] for c in columns if c.lower().startswith(LOSS_PREFIX) and len(c) > len(LOSS_PREFIX)]
    if not domains:
        raise DataError(f"{where(-1)} has no {LOSS_PREFIX}<domain> columns (the validation loss per domain); its columns "
                        f"are {', '.join(repr(c) for c in columns)}")
    name_column = next((c for c in columns if c.lower() in NAME_COLUMNS), None)
    proportions = np.array([[_number(row, f"{prefix}{s}", where(i), minimum=0.0) for s in sources]
                            for i, row in enumerate(rows)])
    losses = np.array([[_number(row, f"{LOSS_PREFIX}{d}", where(i), minimum=None) for d in domains]
                       for i, row in enumerate(rows)])
    totals = proportions.sum(axis=1)
    for i, total in enumerate(totals):
        if prefix == PROPORTION_PREFIX and abs(total - 1.0) > SUM_TOLERANCE:
            raise DataError(f"{where(i)}: the {PROPORTION_PREFIX} columns sum to {total:.6g}, not 1 (within "
                            f"{SUM_TOLERANCE:g}): fix the row, or name the columns {WEIGHT_PREFIX}<domain> to have "
                            "each row normalised")
        if total <= 0:
            raise DataError(f"{where(i)}: every {prefix} column is 0; a mixture needs a positive weight")
    names = tuple((row.get(name_column, "").strip() if name_column else "") or where(i) for i, row in enumerate(rows))
    mixtures = Mixtures(names, tuple(sources), tuple(domains), proportions / totals[:, None], losses)
    return _resolve_duplicates(mixtures, duplicates, where, note)


def read_mixture_csv(path: Path, duplicates: str = "refuse", note: Callable[[str], None] = print) -> Mixtures:
    """Mixtures from a CSV (see the module docstring); a row's name is its `name` cell or FILE:LINE."""
    if not path.is_file():
        raise UsageError(f"{path} is not a file; give a CSV with one row per trained mixture")
    table = read_table(path, "one row per trained mixture")
    header = [cell.strip() for cell in table[0]]
    lines = [line for line, row in enumerate(table[1:], start=2) if any(cell.strip() for cell in row)]
    rows = [{name: (table[line - 1][k].strip() if k < len(table[line - 1]) else "") for k, name in enumerate(header)}
            for line in lines]
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    return mixtures_from_rows(rows, lambda i: f"{path}:{lines[i]}" if i >= 0 else str(path), duplicates, note)


def _proportion_columns(columns: list[str], source: str) -> tuple[str, list[str]]:
    """The prefix (r_ or weight_) and the training domains of the proportion columns."""
    found = {prefix: [c[len(prefix):] for c in columns if c.lower().startswith(prefix) and len(c) > len(prefix)]
             for prefix in (PROPORTION_PREFIX, WEIGHT_PREFIX)}
    if found[PROPORTION_PREFIX] and found[WEIGHT_PREFIX]:
        raise DataError(f"{source} has both {PROPORTION_PREFIX} and {WEIGHT_PREFIX} columns; give the mixture one way")
    prefix = PROPORTION_PREFIX if found[PROPORTION_PREFIX] else WEIGHT_PREFIX
    if len(found[prefix]) < 2:
        raise DataError(f"{source} needs {PROPORTION_PREFIX}<domain> (or {WEIGHT_PREFIX}<domain>) columns for at least "
                        f"2 training domains, found {len(found[prefix])}; its columns are "
                        f"{', '.join(repr(c) for c in columns)}")
    return prefix, found[prefix]


def _number(row: Mapping[str, str], column: str, where: str, minimum) -> float:
    """The cell as a finite number: >= `minimum` (a proportion), or > 0 (`minimum` None: a loss)."""
    cell = row.get(column, "")
    try:
        value = float(cell)
    except ValueError:
        value = float("nan")
    if minimum is None and not (np.isfinite(value) and value > 0):
        raise DataError(f"{where}: column {column!r} must hold a positive loss, got {cell!r}")
    if minimum is not None and not (np.isfinite(value) and value >= minimum):
        raise DataError(f"{where}: column {column!r} must hold a proportion >= {minimum:g}, got {cell!r}")
    return value


def _resolve_duplicates(mixtures: Mixtures, duplicates: str, where: Callable[[int], str],
                        note: Callable[[str], None]) -> Mixtures:
    """These mixtures with none twice: refused naming the first repeat, or each repeat's losses averaged."""
    keys = np.round(mixtures.proportions / SAME_MIXTURE_ATOL)
    _, first, inverse, counts = np.unique(keys, axis=0, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    groups = [np.flatnonzero(inverse == k) for k in np.argsort(first) if counts[k] > 1]
    if not groups:
        return mixtures
    rows = sum(len(g) for g in groups)
    i, j = int(groups[0][0]), int(groups[0][1])
    if duplicates == "refuse":
        mix = ", ".join(f"{s} {p:.4g}" for s, p in zip(mixtures.sources, mixtures.proportions[i]))
        raise DataError(f"{where(i)} and {where(j)} hold the same mixture ({mix}); {len(groups)} mixtures are held by "
                        f"{rows} rows, and the law takes one loss per mixture: keep one row of each, or pass "
                        "--duplicates mean to average their losses")
    keep = [k for k in range(len(mixtures)) if k not in {int(x) for g in groups for x in g[1:]}]
    losses = mixtures.losses.copy()
    for group in groups:
        losses[group[0]] = mixtures.losses[group].mean(axis=0)
    merged = Mixtures(tuple(mixtures.names[k] for k in keep), mixtures.sources, mixtures.domains,
                      mixtures.proportions[keep], losses[keep])
    note(f"note: {len(groups)} mixtures are held by {rows} rows (first: {where(i)} and {where(j)}); each one's losses "
         f"averaged (--duplicates mean): {len(merged)} mixtures")
    return merged
