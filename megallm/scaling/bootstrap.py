"""Bootstrap confidence intervals: refit every approach on points resampled with replacement.

Each resample draws len(points) points with replacement (numpy's default_rng(seed): reproducible).
Each approach that fitted the full data is refitted as it was fitted there: approach 3 from
Hoffmann's grid (L-BFGS-B from the BOOTSTRAP_STARTS grid starts of lowest objective on that
resample, never from the full-data optimum: a start where the objective is flat, as E run to its
floor, stays where it is and gives an interval of zero width), approaches 1 and 2 alike (approach 2
keeps its mode, shared or interpolated levels). A resample an approach cannot fit (fewer than 3
model sizes, no frontier, no usable levels, a law on its bounds or not converged) gives NaN there
and is left out of that approach's intervals, and counted: where more resamples than the interval
may leave out (1 - confidence) gave none, the study withholds that approach's intervals.
Intervals are percentile intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from megallm.scaling.fit import NotFitted, PowerLaw, envelope, isoflop
from megallm.scaling.parametric import Law, fit_law
from megallm.scaling.points import Points

MIN_SIZES = 3  # approach 3 on fewer model sizes cannot separate A/N^alpha from E
# L-BFGS-B runs per resample's approach-3 refit, from its lowest grid starts: on the Chinchilla points
# the lowest start alone reaches the optimum of all 4500 (tests/scaling/test_parametric.py); 4 keep 200
# resamples to about half a minute on 2 cores.
BOOTSTRAP_STARTS = 4


@dataclass(frozen=True)
class Samples:
    """One row per resample; NaN where the approach could not be fitted."""

    resamples: int
    seed: int
    laws: np.ndarray  # (R, 5): approach 3's (ln A, ln B, ln E, alpha, beta)
    envelope: np.ndarray  # (R, 4): approach 1's N_opt (exponent, coefficient), D_opt (exponent, coefficient)
    isoflop: np.ndarray  # (R, 4): approach 2's, the same

    def fitted(self, name: str) -> int:
        return int(np.isfinite(getattr(self, name)[:, 0]).sum())

    def power_laws(self, name: str) -> list[tuple[PowerLaw, PowerLaw]]:
        """Approach 1's ("envelope") or 2's ("isoflop") (N_opt, D_opt) laws of every resample that fitted."""
        return [(PowerLaw(row[0], row[1]), PowerLaw(row[2], row[3]))
                for row in getattr(self, name) if np.all(np.isfinite(row))]

    def laws_fitted(self) -> list[Law]:
        """Approach 3's law of every resample that fitted."""
        return [Law.from_vector(x) for x in self.laws if np.all(np.isfinite(x))]


def resample(points: Points, isoflop_mode: Optional[str], fit_laws: bool, resamples: int, seed: int,
             envelope_fitted: bool = True, starts: int = BOOTSTRAP_STARTS) -> Samples:
    """Refit each approach that fitted the full data (approach 2 in `isoflop_mode`, None: it did not;
    approach 3 when `fit_laws`; approach 1 when `envelope_fitted`) on `resamples` resamples."""
    rng = np.random.default_rng(seed)
    laws = np.full((resamples, 5), np.nan)
    env = np.full((resamples, 4), np.nan)
    iso = np.full((resamples, 4), np.nan)
    for r in range(resamples):
        sample = points.take(rng.integers(0, len(points), size=len(points)))
        if fit_laws and len(sample.size_groups()) >= MIN_SIZES:
            try:
                laws[r] = fit_law(sample.n, sample.d, sample.loss, keep_best=starts).vector
            except NotFitted:
                pass
        if envelope_fitted:
            try:
                fit1 = envelope(sample)
                env[r] = _row(fit1.n_opt, fit1.d_opt)
            except NotFitted:
                pass
        if isoflop_mode is not None:
            try:
                fit2 = isoflop(sample, isoflop_mode)
                iso[r] = _row(fit2.n_opt, fit2.d_opt)
            except NotFitted:
                pass
    return Samples(resamples, seed, laws, env, iso)


def _row(n_opt: PowerLaw, d_opt: PowerLaw) -> tuple[float, float, float, float]:
    return n_opt.exponent, n_opt.coefficient, d_opt.exponent, d_opt.coefficient


def interval(values: np.ndarray, confidence: float) -> Optional[tuple[float, float]]:
    """The percentile interval of the finite values (None with fewer than 2)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return None
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)
