"""Ye et al. 2024's data-mixing law ("Data Mixing Laws: Optimizing Data Mixtures by Predicting Language
Modeling Performance", arXiv:2403.16952, eq. 6): the validation loss on domain i of a model trained on
the mixture r (proportions of m training domains, sum r_j = 1) is

    L_i(r) = c_i + k_i exp(sum_j t_ij r_j)

The degeneracy: since sum_j r_j = 1, adding a to every t_ij multiplies exp(...) by exp(a), which k_i
absorbs; only the differences t_ij - t_im are determined. We fix t_im = 0 (the last training domain is the
reference): each domain's law has m + 1 free parameters (ln c_i, ln k_i, t_i1 .. t_i,m-1), and the
t_ij read "how much more (t < 0: less) loss than with the same share of the reference domain".

The fit, per evaluated domain: least squares on ln L, that is the sum over mixtures of
(ln L_pred - ln L_obs)^2, the maximum likelihood under a relative (multiplicative) noise, which puts
domains of loss 1.6 and 3.7 on one footing. Ye et al.'s released code (yegcjs/mixinglaws, law.py) fits
the raw loss by summed Huber loss (delta 0.05 in mix_5_domains.ipynb) with torch's L-BFGS from 6000
starts; a sweep's residuals (a few thousandths of a nat) all lie far inside that delta, where Huber is
least squares, so the objectives agree where it matters; least squares also makes the estimator's
spread follow from the noise (sigma^2 (J^T J)^-1), which the tests check against. Parameters: ln c and
ln k (c, k > 0, as Ye et al.'s exp(log_c), exp(log_k)) with c in [TERM_FLOOR x min loss, max loss] and
t within [-MAX_T, MAX_T].

The search: START_COUNT t vectors (a seeded normal draw of scale START_SCALE, with t = 0; deterministic),
each given its best (c, k) by linear least squares on the loss for that t; the objective at all of them
(vectorised), then a trust-region least-squares solver (scipy's `least_squares`, method "trf", analytic
Jacobian, tolerances at machine epsilon) from the `keep_best` lowest, as megallm.scaling.parametric
runs L-BFGS-B from its grid's lowest starts. Not L-BFGS-B: its stop on a relative decrease of the
objective ends far from the optimum as the residuals approach 0 (exact data), where a Gauss-Newton step
converges quadratically.

Which laws count: a law with c on its floor (the points do not pin the irreducible loss: over the
proportions tried the loss is log-linear), a t on its bound, or an exponential term below TERM_FLOOR of
the loss at every mixture (the loss does not respond to the mixture) is refused (NotFitted), as are
mixtures that cannot pin any law (`identifiability_problem`): fewer distinct mixtures than m + 2 (the
m + 1 parameters and one residual), or mixtures that never vary along some direction of the simplex.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.optimize import least_squares, minimize
from threadpoolctl import threadpool_limits

from megallm.scaling.fit import NotFitted
from megallm.scaling.parametric import KEEP_BEST_STARTS, ON_BOUND, TERM_FLOOR

MAX_T = 50.0  # exp(50 x r) stays far inside float64, and published t's are a few units
START_COUNT = 256
START_SCALE = 3.0
SOLVER_TOLERANCE = float(np.finfo(float).eps)  # least_squares' ftol, xtol, gtol: run to machine precision
# Proportions whose spread along a direction of the simplex is under this do not vary along it: far above
# the rounding of a proportion written to text, far below the step between two mixtures of a sweep.
SPREAD_FLOOR = 1e-6
# IDW baseline: the k nearest trained mixtures, weights 1 / distance^power (Shepard's method).
BASELINE_POWER = 2.0


@dataclass(frozen=True)
class DomainLaw:
    """L(r) = c + k exp(t . r), t's last entry 0 (the reference training domain)."""

    c: float
    k: float
    t: np.ndarray  # (m,), t[-1] == 0

    @classmethod
    def from_vector(cls, x) -> DomainLaw:
        """From (ln c, ln k, t_1 .. t_{m-1})."""
        x = np.asarray(x, float)
        return cls(float(np.exp(x[0])), float(np.exp(x[1])), np.append(x[2:], 0.0))

    @classmethod
    def normalised(cls, c: float, k: float, t) -> DomainLaw:
        """The same law with t shifted to t_m = 0 (k absorbs the shift)."""
        t = np.asarray(t, float)
        return cls(float(c), float(k * np.exp(t[-1])), t - t[-1])

    @property
    def vector(self) -> np.ndarray:
        return np.concatenate([[np.log(self.c), np.log(self.k)], self.t[:-1]])

    def loss(self, r) -> np.ndarray:
        """L at proportions r (..., m)."""
        return self.c + self.k * np.exp(np.asarray(r, float) @ self.t)


@dataclass(frozen=True)
class DomainFit:
    law: DomainLaw
    cost: float  # half the sum of squared log residuals
    rmse: float  # of the loss itself, over the fitted mixtures
    optimised: int  # starts the solver ran from
    converged: int


def identifiability_problem(proportions: np.ndarray, sources: tuple[str, ...]) -> Optional[str]:
    """Why these mixtures cannot pin a law of len(sources) training domains, or None."""
    m = len(sources)
    distinct = len(np.unique(np.round(proportions / SPREAD_FLOOR), axis=0))
    needed = m + 2
    if distinct < needed:
        return (f"{distinct} distinct mixtures cannot pin a mixing law of {m} training domains: each domain's law has "
                f"{m + 1} free parameters (c, k and {m - 1} t's, t_{sources[-1]} = 0), and at least one more mixture "
                f"is needed to leave a residual: train {needed - distinct} more mixture(s) (at least {needed} in all)")
    spread = proportions.max(axis=0) - proportions.min(axis=0)
    for source, width in zip(sources, spread):
        if width < SPREAD_FLOOR:
            return (f"r_{source} is {proportions[0, sources.index(source)]:.6g} in every mixture: its t cannot be told "
                    f"from k; train mixtures with other shares of {source}")
    centred = proportions - proportions.mean(axis=0)
    _, singular, rows = np.linalg.svd(centred, full_matrices=True)
    rank = int(np.sum(singular > SPREAD_FLOOR))
    if rank < m - 1:
        flat = rows[rank:] - rows[rank:].mean(axis=1, keepdims=True)  # the null space's part within the simplex
        null = flat[np.argmax(np.linalg.norm(flat, axis=1))]
        null = null / null[np.argmax(np.abs(null))]
        combination = " ".join(f"{w:+.3g} r_{s}" for s, w in zip(sources, null) if abs(w) > 1e-3).lstrip("+")
        return (f"the mixtures vary along only {rank} of the {m - 1} directions of the simplex: {combination} is the same "
                f"in all of them, so the law cannot tell those domains' t's apart; train mixtures that change it")
    return None


def residuals(x: np.ndarray, r: np.ndarray, log_loss: np.ndarray) -> np.ndarray:
    """ln L_pred - ln L_obs at the parameters x = (ln c, ln k, t_1 .. t_{m-1}) and mixtures r (n, m)."""
    scaled = np.exp(x[1] + r[:, :-1] @ x[2:])
    return np.log(np.exp(x[0]) + scaled) - log_loss


def jacobian(x: np.ndarray, r: np.ndarray, log_loss: np.ndarray) -> np.ndarray:
    """d residuals / d x: (n, m + 1)."""
    c, scaled = np.exp(x[0]), np.exp(x[1] + r[:, :-1] @ x[2:])
    pred = c + scaled
    share = scaled / pred
    return np.column_stack([c / pred, share, share[:, None] * r[:, :-1]])


def starts(m: int, seed: int = 0, count: int = START_COUNT) -> np.ndarray:
    """The t vectors (count, m - 1) the search starts from: t = 0, then a seeded normal draw."""
    draw = np.random.default_rng(seed).normal(0.0, START_SCALE, size=(count - 1, m - 1))
    return np.vstack([np.zeros((1, m - 1)), np.clip(draw, -MAX_T, MAX_T)])


def _start_vectors(t_starts: np.ndarray, r: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """For each t, (ln c, ln k, t) with (c, k) the least-squares fit of the loss (c in its box, k > 0)."""
    e = np.exp(t_starts @ r[:, :-1].T)  # (S, n)
    e_mean, loss_mean = e.mean(axis=1), loss.mean()
    variance = ((e - e_mean[:, None]) ** 2).mean(axis=1)
    covariance = ((e - e_mean[:, None]) * (loss - loss_mean)).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(variance > 0, covariance / variance, 0.0)
    c = np.clip(loss_mean - k * e_mean, TERM_FLOOR * loss.min() * 2, loss.min() * (1 - 1e-3))
    k = np.maximum((loss - c[:, None]) / e, 1e-12).mean(axis=1)
    return np.column_stack([np.log(c), np.log(k), t_starts])


def _box(loss: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    low = np.concatenate([[np.log(TERM_FLOOR * loss.min()), -np.inf], np.full(m - 1, -MAX_T)])
    high = np.concatenate([[np.log(loss.max()), np.inf], np.full(m - 1, MAX_T)])
    return low, high


def fit_domain(r: np.ndarray, loss: np.ndarray, keep_best: int = KEEP_BEST_STARTS, seed: int = 0) -> DomainFit:
    """The least-squares law of one domain's losses at mixtures r (n, m). NotFitted when no start converged
    or the best law is `degenerate`."""
    r, loss = np.asarray(r, float), np.asarray(loss, float)
    m, log_loss = r.shape[1], np.log(loss)
    low, high = _box(loss, m)
    candidates = np.clip(_start_vectors(starts(m, seed), r, loss), low, high)
    with np.errstate(over="ignore", invalid="ignore"):
        pred = np.exp(candidates[:, :1]) + np.exp(candidates[:, 1:2] + candidates[:, 2:] @ r[:, :-1].T)
        at_start = np.nan_to_num(((np.log(pred) - log_loss) ** 2).sum(axis=1), nan=np.inf)
    chosen = np.argsort(at_start, kind="stable")[:keep_best]
    best_x, best, converged = None, np.inf, 0
    with threadpool_limits(limits=1, user_api="blas"):  # tiny solver steps: a BLAS thread pool only slows them
        for index in chosen:
            result = least_squares(residuals, candidates[index], jac=jacobian, bounds=(low, high), method="trf",
                                   args=(r, log_loss), ftol=SOLVER_TOLERANCE, xtol=SOLVER_TOLERANCE,
                                   gtol=SOLVER_TOLERANCE, max_nfev=2000)
            ok = result.status > 0 and np.isfinite(result.cost)
            converged += ok
            if ok and result.cost < best:
                best_x, best = result.x, float(result.cost)
    if best_x is None:
        raise NotFitted(f"the least-squares solver converged from none of its {len(chosen)} starts")
    law = DomainLaw.from_vector(best_x)
    why = degenerate(law, r, loss)
    if why is not None:
        raise NotFitted(why)
    rmse = float(np.sqrt(np.mean((law.loss(r) - loss) ** 2)))
    return DomainFit(law, best, rmse, len(chosen), converged)


def degenerate(law: DomainLaw, r: np.ndarray, loss: np.ndarray) -> Optional[str]:
    """Why these mixtures do not determine `law` (c on its floor, a t on its bound, a vanishing term), or None."""
    if law.c <= TERM_FLOOR * loss.min() * (1 + ON_BOUND):
        return (f"c ran to its floor {law.c:.3g}: over the proportions tried the loss is log-linear in the mixture, "
                "so the mixtures do not pin the irreducible loss; train mixtures with more extreme proportions")
    if np.any(np.abs(law.t) >= MAX_T - ON_BOUND):
        return f"a t ran to its bound ±{MAX_T:g} ({', '.join(f'{v:.3g}' for v in law.t)})"
    if np.max(law.k * np.exp(r @ law.t) / loss) < TERM_FLOOR:
        return (f"k exp(t . r) is under {TERM_FLOOR:g} of the loss at every mixture (k {law.k:.3g}): the loss does not "
                "respond to the mixture")
    return None


def idw_baseline(r_trained: np.ndarray, loss_trained: np.ndarray, r, neighbours: Optional[int] = None) -> np.ndarray:
    """The naive prediction of the losses (n, d) at proportions r (m,): inverse-distance weighting (Shepard,
    weights 1 / distance^BASELINE_POWER, Euclidean on the proportions) of the `neighbours` nearest trained
    mixtures (default m, the vertices of a simplex around r); a trained mixture's own losses at it."""
    distance = np.linalg.norm(np.asarray(r_trained, float) - np.asarray(r, float), axis=1)
    nearest = np.argsort(distance, kind="stable")[:neighbours or r_trained.shape[1]]
    if distance[nearest[0]] < 1e-12:
        return np.asarray(loss_trained, float)[nearest[0]]
    weights = distance[nearest] ** -BASELINE_POWER
    return weights @ np.asarray(loss_trained, float)[nearest] / weights.sum()


def feasible_point(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The point of {sum r = 1, low <= r <= high} nearest the uniform mixture: clip(1/m + shift), the shift
    found by bisection (the sum rises with it). Needs sum(low) <= 1 <= sum(high)."""
    m = len(low)
    lo, hi = -1.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.clip(1.0 / m + mid, low, high).sum() < 1.0:
            lo = mid
        else:
            hi = mid
    return np.clip(1.0 / m + 0.5 * (lo + hi), low, high)


def optimal_mixture(laws: list[DomainLaw], weights, low, high) -> np.ndarray:
    """The proportions minimising sum_i weights_i L_i(r) on {sum r = 1, low <= r <= high} (SLSQP from
    `feasible_point`). With weights >= 0 and every k > 0 the target is a positive sum of exponentials of
    linear functions: convex, so this minimum is the only one and one start finds it."""
    weights, low, high = (np.asarray(v, float) for v in (weights, low, high))
    k = np.array([law.k for law in laws])
    t = np.stack([law.t for law in laws])  # (d, m)

    def target(r):
        scaled = weights * k * np.exp(t @ r)
        return float(scaled.sum()), scaled @ t

    result = minimize(target, feasible_point(low, high), jac=True, method="SLSQP", bounds=list(zip(low, high)),
                      constraints=[{"type": "eq", "fun": lambda r: r.sum() - 1.0, "jac": lambda r: np.ones_like(r)}],
                      options={"ftol": 1e-15, "maxiter": 1000})
    if not result.success:
        raise NotFitted(f"SLSQP did not find the optimal mixture: {result.message}")
    return np.clip(result.x, low, high) / np.clip(result.x, low, high).sum()
