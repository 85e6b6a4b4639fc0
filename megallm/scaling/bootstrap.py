"""Bootstrap confidence intervals: refit every approach on points resampled with replacement.

Each resample draws len(points) points with replacement (numpy's default_rng(seed): reproducible).
Approach 3 is refitted by one L-BFGS-B run from the full-data optimum (not the 4500-start grid: the
optimum of a resample lies near it, and this keeps 200 resamples to seconds); approaches 1 and 2 are
refitted as they are on the full data (approach 2 keeps its mode, shared or interpolated levels). A
resample an approach cannot fit (fewer than 3 model sizes, no frontier, no usable levels) gives NaN
there and is left out of that approach's intervals. Intervals are percentile intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from threadpoolctl import threadpool_limits

from megallm.scaling.fit import NotFitted, envelope, isoflop
from megallm.scaling.parametric import lbfgs
from megallm.scaling.points import Points

MIN_SIZES = 3  # approach 3 on fewer model sizes cannot separate A/N^alpha from E


@dataclass(frozen=True)
class Samples:
    """One row per resample; NaN where the approach could not be fitted."""

    resamples: int
    seed: int
    laws: np.ndarray  # (R, 5): approach 3's (ln A, ln B, ln E, alpha, beta)
    envelope: np.ndarray  # (R, 2): approach 1's exponents (a, b)
    isoflop: np.ndarray  # (R, 2): approach 2's exponents (a, b)

    def fitted(self, name: str) -> int:
        return int(np.isfinite(getattr(self, name)[:, 0]).sum())


def resample(points: Points, law_start: np.ndarray, isoflop_mode: Optional[str], resamples: int,
             seed: int) -> Samples:
    rng = np.random.default_rng(seed)
    laws = np.full((resamples, 5), np.nan)
    env = np.full((resamples, 2), np.nan)
    iso = np.full((resamples, 2), np.nan)
    with threadpool_limits(limits=1, user_api="blas"):  # tiny L-BFGS-B steps: a BLAS thread pool only slows them
        for r in range(resamples):
            sample = points.take(rng.integers(0, len(points), size=len(points)))
            if len(sample.size_groups()) >= MIN_SIZES:
                x, value = lbfgs(law_start, sample.n, sample.d, sample.loss)
                if np.isfinite(value):
                    laws[r] = x
            try:
                fit1 = envelope(sample)
                env[r] = fit1.n_opt.exponent, fit1.d_opt.exponent
            except NotFitted:
                pass
            if isoflop_mode is not None:
                try:
                    fit2 = isoflop(sample, isoflop_mode)
                    iso[r] = fit2.n_opt.exponent, fit2.d_opt.exponent
                except NotFitted:
                    pass
    return Samples(resamples, seed, laws, env, iso)


def interval(values: np.ndarray, confidence: float) -> Optional[tuple[float, float]]:
    """The percentile interval of the finite values (None with fewer than 2)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return None
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)
