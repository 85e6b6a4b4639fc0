"""`analyse`: the three approaches and their bootstrap on one set of points, as one `Study`.

Approaches 2 and 3 need points of at least 3 model sizes, approach 3 more points than its 5
parameters: fewer is a one-line DataError. Approaches 1 and 2 may still be impossible on valid input
(no two frontier points, no two usable compute levels): the study then carries the reason instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from megallm.errors import DataError, UsageError
from megallm.scaling.bootstrap import MIN_SIZES, Samples, interval, resample
from megallm.scaling.fit import ISOFLOP_MODES, EnvelopeFit, IsoFlopFit, NotFitted, envelope, isoflop
from megallm.scaling.parametric import KEEP_BEST_STARTS, Law, LawFit, fit_law
from megallm.scaling.points import Points

MIN_POINTS = 6  # approach 3 fits 5 parameters


@dataclass(frozen=True)
class Options:
    drop_highest: int = 0  # leave out this many highest-loss points first (Epoch: 5 on the Chinchilla CSV)
    bootstrap: int = 200  # resamples; 0: no intervals
    seed: int = 0
    confidence: float = 0.95
    isoflop: str = "auto"  # approach 2's levels: auto, levels (shared) or interpolate
    keep_best: Optional[int] = KEEP_BEST_STARTS  # L-BFGS-B from this many grid starts; None: all 4500

    def __post_init__(self):
        if self.drop_highest < 0:
            raise UsageError(f"--drop-highest must be >= 0, got {self.drop_highest}")
        if self.bootstrap < 0:
            raise UsageError(f"--bootstrap must be >= 0, got {self.bootstrap}")
        if not 0 < self.confidence < 1:
            raise UsageError(f"--confidence must be within (0, 1), got {self.confidence}")
        if self.isoflop not in ISOFLOP_MODES:
            raise UsageError(f"--isoflop must be one of {', '.join(ISOFLOP_MODES)}, got {self.isoflop!r}")
        if self.keep_best is not None and self.keep_best < 1:
            raise UsageError(f"--starts must be >= 1, got {self.keep_best}")


@dataclass(frozen=True)
class Study:
    points: Points  # the points fitted (after drop_highest)
    dropped: tuple[str, ...]  # names of the points left out by drop_highest
    options: Options
    law: LawFit
    envelope: Optional[EnvelopeFit] = None
    isoflop: Optional[IsoFlopFit] = None
    not_fitted: dict[str, str] = field(default_factory=dict)  # approach ("envelope", "isoflop") -> why not
    samples: Optional[Samples] = None

    def laws(self) -> list[Law]:
        """Approach 3's law of every bootstrap resample that fitted."""
        if self.samples is None:
            return []
        return [Law.from_vector(x) for x in self.samples.laws if np.all(np.isfinite(x))]

    def interval(self, values) -> Optional[tuple[float, float]]:
        return interval(np.asarray(values, dtype=float), self.options.confidence)

    def intervals(self) -> dict[str, Optional[tuple[float, float]]]:
        """Bootstrap intervals of every fitted number, keyed as in fit.json."""
        if self.samples is None:
            return {}
        laws = self.laws()
        out = {f"approach3.{name}": self.interval([getattr(law, name) for law in laws])
               for name in ("A", "B", "E", "alpha", "beta", "a", "b", "G")}
        for approach, rows in (("approach1", self.samples.envelope), ("approach2", self.samples.isoflop)):
            out[f"{approach}.a"] = self.interval(rows[:, 0])
            out[f"{approach}.b"] = self.interval(rows[:, 1])
        return out


def check_points(points: Points, context: str = "") -> None:
    """Raise a DataError unless approaches 2 and 3 can be fitted: MIN_SIZES model sizes, MIN_POINTS points.
    `context` starts the message (what was left out)."""
    sizes = points.size_groups()
    unit = "finished runs" if points.source == "runs" else "points"
    if not len(points):
        raise DataError(f"{context}no {unit} are left to fit")
    if len(sizes) < MIN_SIZES:
        shown = ", ".join(f"{np.exp(np.mean(np.log(points.n[g]))):.3g}" for g in sizes)
        raise DataError(f"{context}the {len(points)} {unit} have {len(sizes)} model size{'s' * (len(sizes) != 1)} "
                        f"(N = {shown}); approaches 2 and 3 need at least {MIN_SIZES} model sizes (and approach 3 "
                        "several token counts per size)")
    if len(points) < MIN_POINTS:
        raise DataError(f"{context}{len(points)} {unit}: approach 3 fits 5 parameters and needs at least {MIN_POINTS}")


def analyse(points: Points, options: Options = Options()) -> Study:
    dropped = points.without_highest(options.drop_highest)
    left_out = tuple(sorted(set(points.names) - set(dropped.names)))
    points = dropped
    check_points(points)
    try:
        law = fit_law(points.n, points.d, points.loss, keep_best=options.keep_best)
    except NotFitted as why:
        raise DataError(f"approach 3 cannot be fitted to these {len(points)} points: {why}") from why
    fits, not_fitted = {}, {}
    for name, fit in (("envelope", lambda: envelope(points)), ("isoflop", lambda: isoflop(points, options.isoflop))):
        try:
            fits[name] = fit()
        except NotFitted as why:
            not_fitted[name] = str(why)
    samples = None
    if options.bootstrap:
        mode = fits["isoflop"].mode if "isoflop" in fits else None
        samples = resample(points, law.vector, mode, options.bootstrap, options.seed)
    return Study(points, left_out, options, law, fits.get("envelope"), fits.get("isoflop"), not_fitted, samples)
