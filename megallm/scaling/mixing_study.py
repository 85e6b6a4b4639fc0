"""A data-mixing law on one set of mixtures: the fit of every evaluated domain, bootstrap intervals, the
losses of untried mixtures, a held-out check against the naive baseline, and the mixture that minimises a
weighted target.

Bootstrap: each resample draws len(mixtures) mixtures with replacement (numpy's default_rng(seed)) and
refits every domain from its own BOOTSTRAP_STARTS lowest starts (megallm.scaling.bootstrap's count). A
resample whose mixtures cannot pin a law (too few distinct, a flat direction) or whose refit is refused
gives NaN and is counted; a domain whose refits failed in more than 1 - confidence of the resamples gets
no intervals. Intervals are percentile intervals (megallm.scaling.bootstrap.interval) of the parameters,
of the predicted losses, and of the optimal proportions (the optimum refound under each resample's laws).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from megallm.errors import DataError, UsageError
from megallm.scaling.bootstrap import BOOTSTRAP_STARTS, interval
from megallm.scaling.fit import NotFitted
from megallm.scaling.mixing import (
    DomainFit,
    DomainLaw,
    fit_domain,
    identifiability_problem,
    idw_baseline,
    optimal_mixture,
)
from megallm.scaling.mixtures import SUM_TOLERANCE, Mixtures
from megallm.scaling.parametric import KEEP_BEST_STARTS

Interval = Optional[tuple[float, float]]


@dataclass(frozen=True)
class Options:
    bootstrap: int = 200
    confidence: float = 0.95
    seed: int = 0
    keep_best: int = KEEP_BEST_STARTS


@dataclass(frozen=True)
class MixingStudy:
    mixtures: Mixtures
    fits: tuple[DomainFit, ...]  # one per evaluated domain
    samples: np.ndarray  # (resamples, domains, m + 1): each resample's law vectors, NaN where it failed
    options: Options

    @property
    def laws(self) -> list[DomainLaw]:
        return [fit.law for fit in self.fits]

    def fitted(self, domain: int) -> int:
        return int(np.isfinite(self.samples[:, domain, 0]).sum())

    def has_intervals(self, domain: int) -> bool:
        resamples = len(self.samples)
        return resamples > 0 and resamples - self.fitted(domain) <= (1 - self.options.confidence) * resamples

    def sample_laws(self, domain: int) -> list[DomainLaw]:
        return [DomainLaw.from_vector(x) for x in self.samples[:, domain] if np.all(np.isfinite(x))]

    def parameter_intervals(self, domain: int) -> dict[str, Interval]:
        """c, k and each t's interval (None without intervals)."""
        names = ["c", "k", *(f"t_{s}" for s in self.mixtures.sources)]
        if not self.has_intervals(domain):
            return dict.fromkeys(names)
        laws = self.sample_laws(domain)
        values = [[law.c for law in laws], [law.k for law in laws], *np.array([law.t for law in laws]).T]
        return {name: interval(np.asarray(v), self.options.confidence) for name, v in zip(names, values)}

    def predict(self, r) -> tuple[np.ndarray, list[Interval]]:
        """Each evaluated domain's loss at proportions r, and its interval."""
        values = np.array([law.loss(r) for law in self.laws])
        spans = [interval(np.array([law.loss(r) for law in self.sample_laws(i)]), self.options.confidence)
                 if self.has_intervals(i) else None for i in range(len(self.laws))]
        return values, spans


def analyse(mixtures: Mixtures, options: Options = Options()) -> MixingStudy:
    """Fit every evaluated domain's law (a DataError where the mixtures cannot pin it), then the bootstrap."""
    problem = identifiability_problem(mixtures.proportions, mixtures.sources)
    if problem is not None:
        raise DataError(problem)
    fits = []
    for i, domain in enumerate(mixtures.domains):
        try:
            fits.append(fit_domain(mixtures.proportions, mixtures.losses[:, i], options.keep_best, options.seed))
        except NotFitted as why:
            raise DataError(f"the mixing law of domain {domain!r} is not pinned by these {len(mixtures)} mixtures: "
                            f"{why}") from None
    return MixingStudy(mixtures, tuple(fits), _resample(mixtures, options), options)


def _resample(mixtures: Mixtures, options: Options) -> np.ndarray:
    rng = np.random.default_rng(options.seed)
    m, d = len(mixtures.sources), len(mixtures.domains)
    samples = np.full((options.bootstrap, d, m + 1), np.nan)
    for s in range(options.bootstrap):
        sample = mixtures.take(rng.integers(0, len(mixtures), size=len(mixtures)))
        if identifiability_problem(sample.proportions, sample.sources) is not None:
            continue
        for i in range(d):
            try:
                samples[s, i] = fit_domain(sample.proportions, sample.losses[:, i], BOOTSTRAP_STARTS,
                                           options.seed).law.vector
            except NotFitted:
                pass
    return samples


# ---- mixtures given by name ---------------------------------------------------------------------------
def per_name(given: Mapping[str, float], names: tuple[str, ...], what: str, default: float) -> np.ndarray:
    """The values of `given` (name -> value) in the order of `names`, `default` for the others; a
    UsageError for a name not among them."""
    unknown = [name for name in given if name not in names]
    if unknown:
        raise UsageError(f"{what}: {unknown[0]!r} is not a domain of these mixtures; they are "
                         f"{', '.join(repr(n) for n in names)}")
    return np.array([float(given.get(name, default)) for name in names])


def proportions_of(given: Mapping[str, float], sources: tuple[str, ...], what: str) -> np.ndarray:
    """A mixture given as source -> proportion (the missing ones 0): non-negative, summing to 1 (within
    SUM_TOLERANCE; then normalised)."""
    r = per_name(given, sources, what, 0.0)
    if np.any(r < 0) or not np.isclose(r.sum(), 1.0, rtol=0, atol=SUM_TOLERANCE):
        raise UsageError(f"{what}: proportions must be >= 0 and sum to 1, got a sum of {r.sum():.6g}")
    return r / r.sum()


# ---- holdout -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Holdout:
    """Held-out mixtures: observed losses, the law's (fitted without them) and the IDW baseline's."""

    names: tuple[str, ...]
    observed: np.ndarray  # (h, d)
    law: np.ndarray
    baseline: np.ndarray


def holdout(mixtures: Mixtures, held: tuple[str, ...], keep_best: int = KEEP_BEST_STARTS, seed: int = 0) -> Holdout:
    """Refit without the mixtures named `held`, and predict them by the law and by `idw_baseline`."""
    train, test = mixtures.split(held)
    problem = identifiability_problem(train.proportions, train.sources)
    if problem is not None:
        raise DataError(f"without the {len(test)} held-out mixtures, {problem}")
    laws = []
    for i, domain in enumerate(train.domains):
        try:
            laws.append(fit_domain(train.proportions, train.losses[:, i], keep_best, seed).law)
        except NotFitted as why:
            raise DataError(f"without the held-out mixtures, domain {domain!r} is not pinned: {why}") from None
    law = np.array([[domain.loss(r) for domain in laws] for r in test.proportions])
    baseline = np.array([idw_baseline(train.proportions, train.losses, r) for r in test.proportions])
    return Holdout(test.names, test.losses, law, baseline)


# ---- the optimal mixture -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Optimum:
    weights: np.ndarray  # per evaluated domain
    low: np.ndarray  # per training domain
    high: np.ndarray
    proportions: np.ndarray
    intervals: list[Interval]  # of each proportion
    losses: np.ndarray
    loss_intervals: list[Interval]
    target: float
    outside: list[str]  # training domains whose optimal share lies beyond the shares tried


def optimum(study: MixingStudy, weights: np.ndarray, low: np.ndarray, high: np.ndarray) -> Optimum:
    """The mixture minimising sum_i weights_i L_i(r) within [low, high] per training domain."""
    if np.any(weights < 0) or not np.any(weights > 0):
        raise UsageError(f"--target weights must be >= 0 and not all 0, got {', '.join(f'{w:g}' for w in weights)}")
    sources = study.mixtures.sources
    if np.any(low < 0) or np.any(high > 1) or np.any(low > high):
        bad = next(s for s, lo, hi in zip(sources, low, high) if lo < 0 or hi > 1 or lo > hi)
        raise UsageError(f"the bounds of {bad!r} must satisfy 0 <= --min <= --max <= 1")
    if low.sum() > 1 or high.sum() < 1:
        raise UsageError(f"no mixture meets the bounds: the --min values sum to {low.sum():.4g} and the --max values to "
                         f"{high.sum():.4g}; a mixture sums to 1")
    try:
        best = optimal_mixture(study.laws, weights, low, high)
    except NotFitted as why:
        raise DataError(str(why)) from None
    spans: list[Interval] = [None] * len(sources)
    if all(study.has_intervals(i) for i in range(len(study.laws))):
        found = []
        for s in range(len(study.samples)):
            if np.all(np.isfinite(study.samples[s])):
                try:
                    found.append(optimal_mixture([DomainLaw.from_vector(x) for x in study.samples[s]], weights, low,
                                                 high))
                except NotFitted:
                    pass
        spans = [interval(column, study.options.confidence) for column in np.array(found).T] if found else spans
    losses, loss_spans = study.predict(best)
    tried = study.mixtures.proportions
    outside = [f"{s} {p:.3g} (tried {lo:.3g}-{hi:.3g})" for s, p, lo, hi in
               zip(sources, best, tried.min(axis=0), tried.max(axis=0)) if p < lo - 1e-6 or p > hi + 1e-6]
    return Optimum(weights, low, high, best, spans, losses, loss_spans, float(weights @ losses), outside)
