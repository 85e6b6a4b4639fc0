"""`analyse`: the three approaches, their bootstrap and the check of which one the points support,
on one set of points, as one `Study`.

Approaches 2 and 3 need points of at least 3 model sizes, approach 3 more points than its 5
parameters: fewer is a one-line DataError. Any approach may still be impossible on valid input (no
two frontier points, no two usable compute levels, a parametric law that does not converge or sits
on its bounds): the study then carries the reason instead, and the others go on; none at all is a
DataError giving the three reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar

import numpy as np

from megallm.errors import DataError, UsageError
from megallm.scaling.bootstrap import MIN_SIZES, Samples, interval, resample
from megallm.scaling.fit import ISOFLOP_MODES, EnvelopeFit, IsoFlopFit, NotFitted, PowerLaw, envelope, isoflop
from megallm.scaling.parametric import KEEP_BEST_STARTS, LawFit, fit_law
from megallm.scaling.points import Points
from megallm.scaling.support import Support, check

MIN_POINTS = 6  # approach 3 fits 5 parameters
APPROACHES = ("approach1", "approach2", "approach3")
FitT = TypeVar("FitT", EnvelopeFit, IsoFlopFit, LawFit)
SAMPLE_FIELDS = {"approach1": "envelope", "approach2": "isoflop", "approach3": "laws"}  # Samples' names
TITLES = {"approach1": "approach 1 (loss frontier)", "approach2": "approach 2 (IsoFLOP)",
          "approach3": "approach 3 (parametric L(N, D))"}


def approach_name(approach: str) -> str:
    """"approach 2" for "approach2": as the report and the plots name it."""
    return f"approach {APPROACHES.index(approach) + 1}"


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
    law: Optional[LawFit] = None  # approach 3
    envelope: Optional[EnvelopeFit] = None  # approach 1
    isoflop: Optional[IsoFlopFit] = None  # approach 2
    not_fitted: dict[str, str] = field(default_factory=dict)  # approach ("approach1", ...) -> why not
    samples: Optional[Samples] = None
    support: Optional[Support] = None  # which approach the points support best
    no_verdict: str = ""  # why `support` is None

    @property
    def fitted(self) -> tuple[str, ...]:
        """The approaches that fitted, in order."""
        fits = {"approach1": self.envelope, "approach2": self.isoflop, "approach3": self.law}
        return tuple(a for a in APPROACHES if fits[a] is not None)

    def power_laws(self, approach: str) -> Optional[tuple[PowerLaw, PowerLaw]]:
        """Approach 1's or 2's (N_opt, D_opt) laws, None when it did not fit."""
        fit = self.envelope if approach == "approach1" else self.isoflop
        return None if fit is None else (fit.n_opt, fit.d_opt)

    def resampled(self, approach: str) -> list:
        """The bootstrap's fits of an approach: laws (approach 3) or (N_opt, D_opt) pairs; none where its
        intervals are withheld."""
        if self.samples is None or approach in self.withheld() or approach not in self.fitted:
            return []
        if approach == "approach3":
            return self.samples.laws_fitted()
        return self.samples.power_laws(SAMPLE_FIELDS[approach])

    def withheld(self) -> dict[str, str]:
        """Approaches whose intervals are withheld, and why: more resamples failed than the interval may
        leave out (a law that sits on its bounds in many resamples is not pinned down by the points)."""
        if self.samples is None:
            return {}
        out = {}
        for approach in self.fitted:
            fitted = self.samples.fitted(SAMPLE_FIELDS[approach])
            failed = self.samples.resamples - fitted
            if fitted < 2 or failed > (1.0 - self.options.confidence) * self.samples.resamples:
                out[approach] = (f"{failed} of {self.samples.resamples} resamples gave no fit, more than a "
                                 f"{100 * self.options.confidence:g}% interval may leave out")
        return out

    def interval(self, values) -> Optional[tuple[float, float]]:
        return interval(np.asarray(values, dtype=float), self.options.confidence)

    def intervals(self) -> dict[str, Optional[tuple[float, float]]]:
        """Bootstrap intervals of every fitted number, keyed as in fit.json (None where withheld)."""
        out: dict[str, Optional[tuple[float, float]]] = {}
        if self.samples is None:
            return out
        if self.law is not None:
            laws = self.resampled("approach3")
            with np.errstate(over="ignore"):  # a resample's G beyond float64 is inf, and outside the interval
                out.update({f"approach3.{name}": self.interval([getattr(law, name) for law in laws])
                            for name in ("A", "B", "E", "alpha", "beta", "a", "b", "G")})
        for approach in ("approach1", "approach2"):
            if approach in self.fitted:
                pairs = self.resampled(approach)
                out[f"{approach}.a"] = self.interval([n_opt.exponent for n_opt, _ in pairs])
                out[f"{approach}.b"] = self.interval([d_opt.exponent for _, d_opt in pairs])
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
    not_fitted: dict[str, str] = {}

    def attempt(name: str, fit: Callable[[], FitT]) -> Optional[FitT]:
        try:
            return fit()
        except NotFitted as why:
            not_fitted[name] = str(why)
            return None

    envelope_fit = attempt("approach1", lambda: envelope(points))
    isoflop_fit = attempt("approach2", lambda: isoflop(points, options.isoflop))
    law = attempt("approach3", lambda: fit_law(points.n, points.d, points.loss, keep_best=options.keep_best))
    fits = tuple(name for name, fit in (("approach1", envelope_fit), ("approach2", isoflop_fit), ("approach3", law))
                 if fit is not None)
    if not fits:
        reasons = "; ".join(f"{TITLES[a]}: {why}" for a, why in not_fitted.items())
        raise DataError(f"none of the three approaches fits these {len(points)} points: {reasons}")
    samples = None
    if options.bootstrap:
        mode = isoflop_fit.mode if isoflop_fit is not None else None
        samples = resample(points, mode, law is not None, options.bootstrap, options.seed,
                           envelope_fitted=envelope_fit is not None)
    support, no_verdict = check(points, fits, options.keep_best)
    return Study(points, left_out, options, law, envelope_fit, isoflop_fit, not_fitted, samples, support, no_verdict)
