"""Which approach the points support best: each approach refitted on the points below one of the
largest compute levels of an IsoFLOP study, and its N_opt at that level against the level's own
parabola minimum.

The three approaches can disagree by a factor of two in N_opt at a far compute (on the Llama 3
IsoFLOP points: approach 3 puts 3.8e25 FLOPs at 894B parameters, approach 2 at 393B), and the
in-sample fits cannot tell which extrapolates: approach 2 matches its own minima by construction.
Held out, a level is a forecast every approach makes from the same smaller budgets, and its parabola
minimum the closest thing to an observed optimum the points hold. Up to HELD_LEVELS of the largest
levels are forecast in turn, each from the points of less compute (at least MIN_LEVELS_BELOW levels),
and the approach of the least mean |ln(forecast / minimum)| is the one the points support best. A
sweep of sizes x token budgets has no shared levels, and gets no verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from megallm.scaling.fit import IsoFlopLevel, NotFitted, envelope, isoflop, shared_levels
from megallm.scaling.parametric import fit_law
from megallm.scaling.points import Points

HELD_LEVELS = 3  # forecast the largest three levels (one level alone is a single, noisy parabola minimum)
MIN_LEVELS_BELOW = 2  # approach 2's power law needs two levels below the forecast one


@dataclass(frozen=True)
class Forecast:
    """One held-out level: its N_opt as observed and as each approach forecasts it from less compute."""

    compute: float
    size: int  # the level's points
    observed: float  # its parabola's minimum
    predicted: dict[str, float]  # approach ("approach1", ...) -> its N_opt there
    not_fitted: dict[str, str]  # approach -> why it could not be fitted on the points below

    def error(self, approach: str) -> float:
        """|ln(predicted / observed)|."""
        return abs(float(np.log(self.predicted[approach] / self.observed)))

    def to_dict(self) -> dict:
        return {"C": self.compute, "points": self.size, "observed_n_opt": self.observed,
                "predicted_n_opt": dict(self.predicted),
                "relative_error": {a: n / self.observed - 1.0 for a, n in self.predicted.items()},
                "not_fitted": dict(self.not_fitted)}


@dataclass(frozen=True)
class Support:
    forecasts: tuple[Forecast, ...]  # largest compute first

    @property
    def approaches(self) -> list[str]:
        """The approaches that forecast every held-out level."""
        names = {a for f in self.forecasts for a in f.predicted}
        return sorted(a for a in names if all(a in f.predicted for f in self.forecasts))

    @property
    def errors(self) -> dict[str, float]:
        """Mean |ln(forecast / minimum)| over the held-out levels, of each of `approaches`."""
        return {a: float(np.mean([f.error(a) for f in self.forecasts])) for a in self.approaches}

    @property
    def best(self) -> Optional[str]:
        """The approach of least mean error among those that forecast every level (None: none did)."""
        errors = self.errors
        return min(errors, key=errors.__getitem__, default=None)

    def to_dict(self) -> dict:
        return {"best": self.best, "mean_abs_log_error": self.errors,
                "forecasts": [f.to_dict() for f in self.forecasts]}


def _forecast(points: Points, level: IsoFlopLevel, approaches: tuple[str, ...], keep_best: Optional[int]) -> Forecast:
    assert level.members is not None  # a shared level (shared_levels)
    below = points.take(np.flatnonzero(points.c < points.c[level.members].min()))
    refit: dict[str, Callable[[], Callable]] = {
        "approach1": lambda: envelope(below).n_opt,
        "approach2": lambda: isoflop(below, "levels").n_opt,
        "approach3": lambda: fit_law(below.n, below.d, below.loss, keep_best=keep_best).law.n_opt,
    }
    predicted, not_fitted = {}, {}
    for approach in approaches:
        try:
            predicted[approach] = float(refit[approach]()(level.compute))
        except NotFitted as why:
            not_fitted[approach] = str(why)
    return Forecast(level.compute, len(level.members), level.n_opt, predicted, not_fitted)


def check(points: Points, approaches: tuple[str, ...], keep_best: Optional[int]) -> tuple[Optional[Support], str]:
    """The forecasts for the approaches that fitted all points, or None and why there is no verdict."""
    levels, _ = shared_levels(points)
    held = levels[MIN_LEVELS_BELOW:][-HELD_LEVELS:][::-1]
    if not held:
        return None, (f"the points hold {len(levels)} shared compute level(s) with a loss minimum inside their sizes; "
                      f"forecasting one from the levels below needs {MIN_LEVELS_BELOW + 1}")
    support = Support(tuple(_forecast(points, level, approaches, keep_best) for level in held))
    if support.best is None:
        return None, "no approach could be fitted below every held-out level"
    return support, ""
