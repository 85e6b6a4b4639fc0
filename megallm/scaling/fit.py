"""Chinchilla's approaches 1 and 2 (Hoffmann et al. 2022, section 3): compute-optimal model size
N_opt(C) and tokens D_opt(C) as power laws of the training compute C.

- Approach 1, `envelope`: the lower envelope (frontier) of final loss against compute over all
  points, and N_opt(C) ∝ C^a, D_opt(C) ∝ C^b fitted by least squares in log-log on the frontier's
  points. Hoffmann et al. take the envelope of whole training curves; from final losses only, the
  frontier holds the runs that no cheaper run beats. Points whose C agree to SAME_COMPUTE_RTOL are
  at one compute (C = 6ND recomputed from a budget's N and D differs in its last bits), where only
  the lowest loss can be on the frontier; a power law needs two such computes.
- Approach 2, `isoflop`: at each compute level with at least 3 model sizes, a parabola of loss
  against ln N; its vertex is N_opt(C), D_opt = C / (6 N_opt); then the same power laws. Levels are
  either shared by the points (`group_levels`: an IsoFLOP sweep; a budget column's values exactly,
  else points within LEVEL_HALF_WIDTH, as the Chinchilla CSV's budgets read off a figure)
  or, for a sweep of model sizes x token budgets where every run has its own C, interpolated
  (`interpolated_levels`: each size's log loss linear in log C between its runs, never beyond).
  `choose_isoflop_mode` picks between them. C is the points' own compute (for megallm runs, FLOPs per
  token x D), and D_opt = C / (6 N_opt) as Hoffmann et al. write it.

A least-squares fit that numpy finds ill-conditioned (its RankWarning) is no fit: the approach (or
the level) is not fitted, and the warning stays off the console.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from megallm.scaling.points import Points, geometric_mean

# Points whose log10 C lie within this of a level's seed are that level: the Chinchilla CSV's budgets
# (6e18 ... 3e21) are read off a figure and scatter by about ±0.03 around each, ≥0.2 apart.
LEVEL_HALF_WIDTH = 0.05
MIN_SIZES_PER_LEVEL = 3  # a parabola needs three distinct model sizes
# A shared level holds at least this share of the points of the fullest one: runs between an IsoFLOP
# sweep's budgets (the Chinchilla CSV holds runs of other schedules too) then form no levels of their
# own, whose 3-4 points would pin a parabola exactly and pull the fit by their noise.
MIN_LEVEL_SHARE = 1 / 3
LEVELS_PER_DECADE = 4  # the geometric grid of interpolated compute levels
ISOFLOP_MODES = ("auto", "levels", "interpolate")
# Computes that agree to this relative precision are one: far above float64's noise in 6ND (1e-16) and a
# CSV's printed digits, far below the step between two budgets or two runs.
SAME_COMPUTE_RTOL = 1e-9


class NotFitted(Exception):
    """An approach that these points cannot support; the message says why (the other approaches go on)."""


def polyfit(x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
    """np.polyfit, with its RankWarning (the x too close together for this degree) raised as NotFitted."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", np.exceptions.RankWarning)
        try:
            return np.polyfit(x, y, degree)
        except np.exceptions.RankWarning as exc:
            raise NotFitted(f"a degree-{degree} fit is ill-conditioned on these {len(x)} points") from exc


def compute_levels(compute: np.ndarray) -> np.ndarray:
    """Each compute's level: 0, 1, ... in increasing compute, one per SAME_COMPUTE_RTOL-wide cluster."""
    order = np.argsort(compute, kind="stable")
    steps = np.diff(np.log(compute[order])) > SAME_COMPUTE_RTOL
    levels = np.empty(len(compute), dtype=int)
    levels[order] = np.concatenate([[0], np.cumsum(steps)]) if len(compute) else []
    return levels


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * C^exponent, fitted by least squares of ln y on ln C."""

    exponent: float
    coefficient: float

    def __call__(self, compute):
        return self.coefficient * np.asarray(compute, dtype=float) ** self.exponent

    @classmethod
    def fit(cls, compute: np.ndarray, y: np.ndarray) -> PowerLaw:
        levels = len(np.unique(compute_levels(np.asarray(compute, dtype=float))))
        if levels < 2:
            raise NotFitted(f"a power law needs points at two compute levels or more; these {len(compute)} "
                            f"are at {levels}")
        slope, intercept = polyfit(np.log(compute), np.log(y), 1)
        return cls(float(slope), float(np.exp(intercept)))

    def inverse(self, y) -> np.ndarray:
        """The compute at which this law gives y."""
        return (np.asarray(y, dtype=float) / self.coefficient) ** (1.0 / self.exponent)

    def __str__(self) -> str:
        return f"{self.coefficient:.3g} C^{self.exponent:.3f}"


# ---- approach 1 ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvelopeFit:
    frontier: np.ndarray  # indices of the points on the lower envelope, by increasing compute
    n_opt: PowerLaw
    d_opt: PowerLaw


def frontier(points: Points) -> np.ndarray:
    """Indices of the points whose loss is below that of every point of less compute, one per compute
    (SAME_COMPUTE_RTOL): the lowest loss there."""
    levels = compute_levels(points.c)
    order = np.lexsort((points.loss, levels))
    first = np.concatenate([[True], np.diff(levels[order]) > 0])  # each level's lowest loss
    order = order[first]
    loss = points.loss[order]
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(loss)[:-1]])
    return order[loss < best_before]


def envelope(points: Points) -> EnvelopeFit:
    edge = frontier(points)
    if len(edge) < 2:
        raise NotFitted(f"the loss frontier holds {len(edge)} point(s); a power law needs 2 or more")
    c = points.c[edge]
    return EnvelopeFit(edge, PowerLaw.fit(c, points.n[edge]), PowerLaw.fit(c, points.d[edge]))


# ---- approach 2 ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IsoFlopLevel:
    """One compute level: the losses of several model sizes and the parabola through them."""

    compute: float
    n: np.ndarray  # model sizes on this level
    loss: np.ndarray  # their losses (observed, or interpolated to `compute`)
    parabola: np.ndarray  # loss = p[0] x^2 + p[1] x + p[2], x = ln N
    members: Optional[np.ndarray]  # indices of the points of a shared level; None when interpolated

    @property
    def n_opt(self) -> float:
        return float(np.exp(-self.parabola[1] / (2 * self.parabola[0])))

    @property
    def loss_opt(self) -> float:
        return float(np.polyval(self.parabola, np.log(self.n_opt)))

    @property
    def d_opt(self) -> float:
        return self.compute / (6.0 * self.n_opt)


@dataclass(frozen=True)
class IsoFlopFit:
    mode: str  # "levels" (shared compute levels) or "interpolate"
    levels: list[IsoFlopLevel]
    n_opt: PowerLaw
    d_opt: PowerLaw
    skipped: int  # levels with ≥3 sizes whose parabola has no minimum inside their sizes


def _level(compute: float, n: np.ndarray, loss: np.ndarray, members: Optional[np.ndarray]) -> Optional[IsoFlopLevel]:
    """The level's parabola, or None where it does not open upwards or its vertex lies outside the sizes."""
    x = np.log(n)
    if len(np.unique(x)) < MIN_SIZES_PER_LEVEL:
        return None
    try:
        parabola = polyfit(x, loss, 2)
    except NotFitted:
        return None
    if parabola[0] <= 0:
        return None
    vertex = -parabola[1] / (2 * parabola[0])
    if not x.min() <= vertex <= x.max():
        return None
    return IsoFlopLevel(float(compute), n, loss, parabola, members)


def group_levels(points: Points, half_width: float = LEVEL_HALF_WIDTH) -> list[np.ndarray]:
    """Points at shared compute levels: a budget's points share its C exactly (SAME_COMPUTE_RTOL), and
    when such levels of ≥3 sizes hold half the points, they are the levels, however close two budgets
    are. Else by mode seeking in log10 C: the point with the most others within ±half_width seeds a
    level of those points; repeat on the rest while a seed has ≥3 distinct sizes."""
    levels = compute_levels(points.c)
    exact = [np.flatnonzero(levels == k) for k in range(levels.max() + 1)] if len(points) else []
    exact = [g for g in exact if len(np.unique(points.n[g])) >= MIN_SIZES_PER_LEVEL]
    if sum(len(g) for g in exact) >= len(points) / 2:
        return exact
    log_c = np.log10(points.c)
    free = np.ones(len(points), dtype=bool)
    groups: list[np.ndarray] = []
    while True:
        near = (np.abs(log_c[:, None] - log_c[None, :]) <= half_width) & free[None, :] & free[:, None]
        counts = near.sum(axis=1)
        seed = int(np.argmax(counts))
        members = np.flatnonzero(near[seed])
        if len(np.unique(points.n[members])) < MIN_SIZES_PER_LEVEL:
            return sorted(groups, key=lambda g: float(np.median(log_c[g])))
        groups.append(members)
        free[members] = False


def shared_levels(points: Points) -> tuple[list[IsoFlopLevel], int]:
    """The parabolas of the shared levels that hold MIN_LEVEL_SHARE of the fullest level's points, and
    the number of those without a minimum inside their sizes."""
    groups = group_levels(points)
    fullest = max((len(g) for g in groups), default=0)
    levels, skipped = [], 0
    for members in (g for g in groups if len(g) >= MIN_LEVEL_SHARE * fullest):
        compute = geometric_mean(points.c[members])
        level = _level(compute, points.n[members], points.loss[members], members)
        if level is None:
            skipped += 1
        else:
            levels.append(level)
    return levels, skipped


def interpolated_levels(points: Points, per_decade: int = LEVELS_PER_DECADE) -> tuple[list[IsoFlopLevel], int]:
    """Levels on a geometric grid of compute: each model size's final log loss interpolated linearly in
    log C between its runs (no extrapolation), at the levels that ≥3 sizes span."""
    curves = []
    for group in points.size_groups():
        log_c = np.log10(points.c[group])
        if len(np.unique(log_c)) < 2:
            continue
        order = np.argsort(log_c)
        size = float(np.exp(np.mean(np.log(points.n[group]))))
        curves.append((size, log_c[order], np.log(points.loss[group][order])))
    if not curves:
        return [], 0
    low = min(curve[1][0] for curve in curves)
    high = max(curve[1][-1] for curve in curves)
    grid = np.arange(np.ceil(low * per_decade), np.floor(high * per_decade) + 1) / per_decade
    levels, skipped = [], 0
    for log_c in grid:
        covering = [(size, np.interp(log_c, c, loss)) for size, c, loss in curves if c[0] <= log_c <= c[-1]]
        if len(covering) < MIN_SIZES_PER_LEVEL:
            continue
        n = np.array([size for size, _ in covering])
        level = _level(10.0 ** log_c, n, np.exp([loss for _, loss in covering]), None)
        if level is None:
            skipped += 1
        else:
            levels.append(level)
    return levels, skipped


def choose_isoflop_mode(points: Points) -> str:
    """Approach 2's mode for these points: "levels" when shared compute levels hold at least 3 usable
    parabolas and half the points (an IsoFLOP sweep), else "interpolate" (a sweep of sizes x token budgets)."""
    levels, _ = shared_levels(points)
    covered = sum(len(level.members) for level in levels if level.members is not None)  # shared levels: all
    return "levels" if len(levels) >= 3 and covered >= len(points) / 2 else "interpolate"


def isoflop(points: Points, mode: str = "auto") -> IsoFlopFit:
    mode = choose_isoflop_mode(points) if mode == "auto" else mode
    levels, skipped = shared_levels(points) if mode == "levels" else interpolated_levels(points)
    if len(levels) < 2:
        how = "shared compute levels" if mode == "levels" else "compute levels spanned by the runs of"
        raise NotFitted(f"{len(levels)} usable compute level(s) ({how} ≥{MIN_SIZES_PER_LEVEL} model sizes, "
                        f"with a loss minimum inside them; {skipped} without); the power law needs 2 or more")
    compute = np.array([level.compute for level in levels])
    n_opt = np.array([level.n_opt for level in levels])
    d_opt = compute / (6.0 * n_opt)
    return IsoFlopFit(mode, levels, PowerLaw.fit(compute, n_opt), PowerLaw.fit(compute, d_opt), skipped)
