"""Chinchilla's approach 3: the parametric loss L(N, D) = E + A / N^alpha + B / D^beta.

Fitted as Hoffmann et al. 2022 (section 3.3, appendix D.2) and Epoch AI's replication (Besiroglu
et al. 2024, "Chinchilla Scaling: A replication attempt"): with a = ln A, b = ln B, e = ln E,

    ln L_pred = LSE(a - alpha ln N, b - beta ln D, e)

and the objective is the SUM over points of Huber(ln L_pred - ln L_obs) with delta = 1e-3, minimised by
L-BFGS-B (scipy, analytic gradient) from Hoffmann's grid of starts: alpha, beta in {0, 0.5, ..., 2},
e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25} (4500 starts, Epoch's np.arange grid); the lowest final
objective wins. Epoch's headline numbers (A 482.0, B 2085, E 1.817, alpha 0.348, beta 0.366) come
from a Huber *likelihood* with a free scale; this summed-Huber procedure gives, on their CSV less its
5 highest losses, A 477.8, B 2143, E 1.817, alpha 0.347, beta 0.367.

Speed: the objective is evaluated at all starts at once (vectorised); L-BFGS-B then runs from the
`keep_best` lowest (default 32): about 1 s, against about 1.5 min for all 4500 on a busy 2-core
machine. On the Chinchilla CSV the best start alone already reaches the optimum of the full search
(tests/scaling/test_parametric.py runs both, the full one marked slow).

Compute-optimal allocation under C = 6ND (Hoffmann's eq. 4): N_opt(C) = G (C/6)^a_exp,
D_opt(C) = (C/6) / N_opt, with G = (alpha A / (beta B))^(1/(alpha+beta)), a_exp = beta/(alpha+beta),
b_exp = alpha/(alpha+beta).

Which laws count: L-BFGS-B runs within a box (alpha, beta in [0, MAX_EXPONENT]; E at least
TERM_FLOOR of the smallest loss), and a run that did not converge or never moved from its start (a
zero gradient there: the objective is flat, as on a table holding each run twice with different
losses) is no result. The best law is refused (NotFitted, with the reason) when it sits on the box,
or when one of its three terms is below TERM_FLOOR of the loss at every point: the points then do
not determine it (E running to 0 on runs far from convergence, alpha to its bound on a small ladder),
and its intervals and predictions would be numbers of the optimiser's stopping point.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from megallm.scaling.fit import NotFitted

HUBER_DELTA = 1e-3
KEEP_BEST_STARTS = 32
# Hoffmann's grid as Epoch's notebook builds it (np.arange excludes the stop): 5 x 5 x 5 x 6 x 6 = 4500.
GRID_ALPHA = GRID_BETA = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_A = GRID_B = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
# scipy's default stop (a relative decrease below 2.2e-9 per step) halts on this flat, nearly-L1
# objective as soon as steps get small: started at the full-data optimum, a bootstrap refit returned its
# start (A within 0.1% in every resample). Run to convergence instead: from the grid, the optimum is the
# same (A 477.83 vs 477.82 from all 4500 starts with scipy's defaults), at ~20 ms per start.
LBFGS_OPTIONS = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 15000, "maxfun": 30000}
_CHUNK = 512  # starts per vectorised evaluation (x points: a few MB)
# The box: published language-model exponents lie within 0.05-0.8 and the grid's within 0-2; 5 leaves
# room for any real one and keeps N^alpha finite in float64 for any model size.
MAX_EXPONENT = 5.0
# A term (E, A/N^alpha, B/D^beta) below this share of the loss at every point is one the law dropped.
TERM_FLOOR = 1e-6
# A parameter within this of its bound (L-BFGS-B puts an active bound's variable on it exactly) sits on it.
ON_BOUND = 1e-6


def hoffmann_grid() -> np.ndarray:
    """The 4500 starts, rows (a, b, e, alpha, beta)."""
    return np.array([(a, b, e, alpha, beta) for alpha, beta, e, a, b
                     in itertools.product(GRID_ALPHA, GRID_BETA, GRID_E, GRID_A, GRID_B)])


@dataclass(frozen=True)
class Law:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    A: float
    B: float
    E: float
    alpha: float
    beta: float

    @classmethod
    def from_vector(cls, x) -> Law:
        a, b, e, alpha, beta = (float(v) for v in x)
        with np.errstate(over="ignore"):  # an A or B beyond float64 is inf, which `degenerate` refuses
            return cls(float(np.exp(a)), float(np.exp(b)), float(np.exp(e)), alpha, beta)

    @property
    def vector(self) -> np.ndarray:
        return np.array([np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta])

    def loss(self, n, d):
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

    @property
    def a(self) -> float:
        """Exponent of N_opt(C) ∝ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt(C) ∝ C^b."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def n_opt(self, compute):
        return self.G * (np.asarray(compute, dtype=float) / 6.0) ** self.a

    def d_opt(self, compute):
        return np.asarray(compute, dtype=float) / 6.0 / self.n_opt(compute)

    def compute_for_params(self, n):
        """The compute at which `n` parameters are compute-optimal."""
        return 6.0 * (np.asarray(n, dtype=float) / self.G) ** (1.0 / self.a)

    def compute_for_tokens(self, d):
        """The compute at which `d` tokens are compute-optimal."""
        return 6.0 * (np.asarray(d, dtype=float) * self.G) ** (1.0 / self.b)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def _log_pred(x: np.ndarray, log_n: np.ndarray, log_d: np.ndarray):
    """ln L_pred for parameter rows x (S, 5) at P points: (S, P), with the three softmax weights."""
    a, b, e, alpha, beta = (x[:, i:i + 1] for i in range(5))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(x), len(log_n)))])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    return top + np.log(total), weights / total


def objectives(x: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
               delta: float = HUBER_DELTA) -> np.ndarray:
    """The summed Huber objective at each row of x (S, 5), vectorised over rows and points."""
    out = np.empty(len(x))
    for start in range(0, len(x), _CHUNK):
        pred, _ = _log_pred(x[start:start + _CHUNK], log_n, log_d)
        out[start:start + _CHUNK] = _huber(pred - log_loss, delta).sum(axis=1)
    return out


def _objective_and_gradient(x: np.ndarray, log_n, log_d, log_loss, delta):
    """The objective at one parameter vector and its gradient (L-BFGS-B's callback: the hot path)."""
    a, b, e, alpha, beta = x
    t1, t2 = a - alpha * log_n, b - beta * log_d
    top = np.maximum(np.maximum(t1, t2), e)
    w1, w2, w3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(e - top)
    total = w1 + w2 + w3
    r = top + np.log(total) - log_loss
    ar = np.abs(r)
    value = np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum()
    dr = np.minimum(np.maximum(r, -delta), delta) / total  # Huber'(r) times d ln L_pred / d term = weight
    g1, g2 = dr * w1, dr * w2
    grad = np.array([g1.sum(), g2.sum(), (dr * w3).sum(), -(g1 @ log_n), -(g2 @ log_d)])
    return float(value), grad


@dataclass(frozen=True)
class LawFit:
    law: Law
    objective: float
    starts: int  # starts the objective was evaluated at
    optimised: int  # starts L-BFGS-B ran from
    converged: int  # of those, the runs that converged after moving from their start

    @property
    def vector(self) -> np.ndarray:
        return self.law.vector


def _data(n, d, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.log(np.asarray(n, float)), np.log(np.asarray(d, float)), np.log(np.asarray(loss, float))


def box(loss) -> list[tuple[Optional[float], Optional[float]]]:
    """L-BFGS-B's bounds on (a, b, e, alpha, beta) for these losses."""
    e_floor = float(np.log(TERM_FLOOR * np.min(loss)))
    return [(None, None), (None, None), (e_floor, None), (0.0, MAX_EXPONENT), (0.0, MAX_EXPONENT)]


def lbfgs(start: np.ndarray, n, d, loss, delta: float = HUBER_DELTA) -> tuple[np.ndarray, float, bool]:
    """L-BFGS-B from one start within the box, run to convergence (LBFGS_OPTIONS): the final parameters,
    the objective, and whether it converged after moving from its start."""
    bounds = box(loss)
    low = np.array([-np.inf if lo is None else lo for lo, _ in bounds])
    high = np.array([np.inf if hi is None else hi for _, hi in bounds])
    start = np.clip(np.asarray(start, float), low, high)  # where L-BFGS-B starts from
    result = minimize(_objective_and_gradient, start, args=(*_data(n, d, loss), delta), jac=True,
                      method="L-BFGS-B", bounds=bounds, options=LBFGS_OPTIONS)
    moved = result.nit > 0 and not np.array_equal(result.x, start)
    return result.x, float(result.fun), bool(result.success and moved and np.isfinite(result.fun))


def degenerate(law: Law, n, d, loss) -> Optional[str]:
    """Why `law` is not determined by these points (it sits on the box, or a term vanishes), or None."""
    n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
    for name in ("alpha", "beta"):
        value = getattr(law, name)
        if value <= ON_BOUND or value >= MAX_EXPONENT - ON_BOUND:
            return f"{name} ran to its bound {value:.3g} (the box is [0, {MAX_EXPONENT:g}])"
    if law.E <= TERM_FLOOR * np.min(loss) * (1 + ON_BOUND):
        per_parameter = d / n
        return (f"E ran to its floor {law.E:.3g} ({TERM_FLOOR:g} of the smallest loss): these points do not pin the "
                f"irreducible loss (they are at {per_parameter.min():.2g}-{per_parameter.max():.2g} tokens per "
                "parameter; Chinchilla's optimum is about 20: train longer budgets)")
    with np.errstate(over="ignore", under="ignore", divide="ignore"):
        terms = {"N": (law.A / n ** law.alpha, "A/N^alpha"), "D": (law.B / d ** law.beta, "B/D^beta")}
    for variable, (term, name) in terms.items():
        if not np.all(np.isfinite(term)):
            return (f"{name} overflows at these points (A {law.A:.3g}, alpha {law.alpha:.3g}, B {law.B:.3g}, "
                    f"beta {law.beta:.3g})")
        if np.max(term / loss) < TERM_FLOOR:
            return (f"{name} ran under {TERM_FLOOR:g} of the loss at every point (A {law.A:.3g}, B {law.B:.3g}): these "
                    f"points do not pin the loss's dependence on {variable}")
    return None


def fit_law(n, d, loss, starts: Optional[np.ndarray] = None, keep_best: Optional[int] = KEEP_BEST_STARTS,
            delta: float = HUBER_DELTA) -> LawFit:
    """The least summed-Huber law over L-BFGS-B runs from the `keep_best` starts of lowest objective
    (all starts when keep_best is None); starts default to Hoffmann's grid. NotFitted when no run
    converged or the best law is `degenerate`."""
    starts = hoffmann_grid() if starts is None else np.asarray(starts, float)
    data = _data(n, d, loss)
    with np.errstate(over="ignore", invalid="ignore"):
        at_start = objectives(starts, *data, delta)
    order = np.argsort(at_start, kind="stable")
    chosen = order if keep_best is None else order[:keep_best]
    best_x, best, converged = None, np.inf, 0
    with threadpool_limits(limits=1, user_api="blas"):  # tiny L-BFGS-B steps: a BLAS thread pool only slows them
        for index in chosen:
            x, value, ok = lbfgs(starts[index], n, d, loss, delta)
            converged += ok
            if ok and value < best:
                best_x, best = x, value
    if best_x is None:
        raise NotFitted(f"L-BFGS-B converged from none of its {len(chosen)} starts (the objective is flat or not "
                        "finite there: a gradient of 0 leaves every start where it is)")
    law = Law.from_vector(best_x)
    why = degenerate(law, n, d, loss)
    if why is not None:
        raise NotFitted(why)
    return LawFit(law, best, len(starts), len(chosen), converged)
