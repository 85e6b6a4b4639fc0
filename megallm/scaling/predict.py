"""What the fitted laws recommend, and how well approach 3 predicts runs it has not seen.

- `predict`: given a compute budget, a parameter count or a token count, the compute-optimal N and D
  by every approach that fitted, side by side, each with its bootstrap intervals: approaches 1 and 2
  from their N_opt(C) and D_opt(C) power laws (C in the points' own convention), approach 3 from
  L(N, D) under C = 6ND (as Hoffmann et al.) with the expected loss; which approach the points
  support best (megallm.scaling.support); a note wherever that extrapolates beyond the fitted points;
  and the `conf/model/` preset nearest in parameters to the best-supported approach's N (with the
  tokens the same compute buys it and, where approach 3 fitted, its expected loss).
- `holdout`: approach 3 fitted without some points (the largest model size, or runs matching a glob),
  and its relative error on those.
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass
from typing import Optional

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from megallm.config.compose import CONF_DIR, available
from megallm.errors import ConfigError, UsageError
from megallm.model.config import ModelConfig
from megallm.model.flops import parameter_count
from megallm.scaling.fit import NotFitted, PowerLaw
from megallm.scaling.parametric import Law, fit_law
from megallm.scaling.points import Points
from megallm.scaling.study import Study, check_points

CSV_PRESET_VOCAB = 32000  # a preset's null vocabulary for a CSV input (Llama 2's; no runs to take it from)
GIVEN = ("compute", "params", "tokens")


@dataclass(frozen=True)
class Preset:
    name: str
    params: int  # parameter_count(...).total, as the fitted runs' N
    vocab_size: int
    vocab_source: str  # where the vocabulary came from: the preset, the fitted runs, or CSV_PRESET_VOCAB


@functools.lru_cache(maxsize=4)  # each prediction asks; reading the ~20 presets with OmegaConf takes ~0.5 s
def presets(vocab_size: Optional[int], vocab_source: str = "the fitted runs'") -> tuple[Preset, ...]:
    """Every conf/model/ preset's parameter count; a null vocab_size takes `vocab_size` (from
    `vocab_source`), else CSV_PRESET_VOCAB."""
    out = []
    for name in available("model"):
        path = CONF_DIR / "model" / f"{name}.yaml"
        try:
            model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path)))
        except (OSError, OmegaConfBaseException, YAMLError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path} is not a model config: {str(exc).splitlines()[0]}") from exc
        assert isinstance(model, ModelConfig)  # to_object builds the structured config's dataclass
        source = "preset"
        if model.vocab_size is None:
            model.vocab_size = vocab_size or CSV_PRESET_VOCAB
            source = vocab_source if vocab_size else "the default for a CSV input"
        out.append(Preset(name, parameter_count(model).total, model.vocab_size, source))
    return tuple(out)


def nearest_preset(n: float, vocab_size: Optional[int], vocab_source: str = "the fitted runs'") -> Optional[Preset]:
    """The preset whose parameter count is nearest to `n` in ratio."""
    return min(presets(vocab_size, vocab_source), key=lambda p: abs(np.log(p.params / n)), default=None)


@dataclass(frozen=True)
class Allocation:
    """One approach's compute-optimal N and D for the prediction."""

    approach: str  # "approach1", "approach2" or "approach3"
    n: float
    d: float
    compute: float  # the compute it spends: approach 3's 6ND, approaches 1 and 2 the points' own C
    loss: Optional[float]  # approach 3's L(N, D); approaches 1 and 2 give none
    intervals: dict[str, Optional[tuple[float, float]]]  # n, d, loss

    def to_dict(self) -> dict:
        out: dict[str, object] = {k: _finite(getattr(self, k)) for k in ("n", "d", "compute", "loss")}
        out["intervals"] = {k: list(v) if v else None for k, v in self.intervals.items()}
        return out


def _finite(value: Optional[float]) -> Optional[float]:
    """JSON has no NaN: a number that is not one is null."""
    return float(value) if value is not None and np.isfinite(value) else None


@dataclass(frozen=True)
class Prediction:
    given: str  # "compute", "params" or "tokens"
    value: float
    allocations: tuple[Allocation, ...]  # one per approach that fitted, in order
    best: Optional[str]  # the approach the points support best (None: no verdict)
    preset: Optional[Preset]  # nearest to `chosen`'s N
    preset_tokens: Optional[float]  # tokens the same compute buys the preset: C / (6 N_preset)
    preset_loss: Optional[float]  # approach 3's L at the preset (None where approach 3 did not fit)
    preset_interval: Optional[tuple[float, float]]
    notes: tuple[str, ...]  # extrapolation beyond the fitted points

    @property
    def chosen(self) -> Allocation:
        """The best-supported approach's allocation, else approach 3's, else the first."""
        by_name = {a.approach: a for a in self.allocations}
        best = by_name.get(self.best) if self.best is not None else None
        return best or by_name.get("approach3") or self.allocations[0]

    def to_dict(self) -> dict:
        return {"given": self.given, "value": self.value, "best": self.best,
                "approaches": {a.approach: a.to_dict() for a in self.allocations},
                "preset": {**vars(self.preset), "for": self.chosen.approach} if self.preset else None,
                "preset_tokens": self.preset_tokens, "preset_loss": self.preset_loss,
                "preset_loss_interval": list(self.preset_interval) if self.preset_interval else None,
                "notes": list(self.notes)}


def law_allocation(law: Law, given: str, value: float) -> tuple[float, float, float]:
    """Approach 3's compute-optimal (N, D, 6ND) for the given compute, parameters or tokens."""
    with np.errstate(over="ignore", invalid="ignore"):  # a resample's law may reach that N or D at no finite C
        compute = {"compute": lambda: value, "params": lambda: law.compute_for_params(value),
                   "tokens": lambda: law.compute_for_tokens(value)}[given]()
        n = float(law.n_opt(compute))
        return n, float(compute) / 6.0 / n, float(compute)


def power_allocation(n_opt: PowerLaw, d_opt: PowerLaw, given: str, value: float) -> tuple[float, float, float]:
    """Approach 1's or 2's compute-optimal (N, D, C) for the given compute, parameters or tokens (NaN
    where a law with a non-positive exponent reaches that N or D at no compute)."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        compute = {"compute": lambda: value, "params": lambda: n_opt.inverse(value) if n_opt.exponent > 0 else np.nan,
                   "tokens": lambda: d_opt.inverse(value) if d_opt.exponent > 0 else np.nan}[given]()
        return float(n_opt(compute)), float(d_opt(compute)), float(compute)


def _allocate(study: Study, approach: str, given: str, value: float) -> Allocation:
    resampled = study.resampled(approach)
    if approach == "approach3":
        assert study.law is not None  # a fitted approach (study.fitted)
        law = study.law.law
        n, d, compute = law_allocation(law, given, value)
        with np.errstate(over="ignore", invalid="ignore"):
            rows = [(*law_allocation(s, given, value), float(s.loss(*law_allocation(s, given, value)[:2])))
                    for s in resampled]
        loss = float(law.loss(n, d))
    else:
        laws = study.power_laws(approach)
        assert laws is not None  # a fitted approach (study.fitted)
        n_opt, d_opt = laws
        n, d, compute = power_allocation(n_opt, d_opt, given, value)
        rows = [(*power_allocation(a, b, given, value), np.nan) for a, b in resampled]
        loss = None
    intervals = {}
    if resampled:
        columns = np.array(rows, dtype=float).T
        intervals = {key: study.interval(columns[k]) for k, key in ((0, "n"), (1, "d"))
                     if (given, key) not in (("params", "n"), ("tokens", "d"))}  # the given one is exact
        if loss is not None:
            intervals["loss"] = study.interval(columns[3])
    return Allocation(approach, n, d, compute, loss, intervals)


def _extrapolation(points: Points, allocations: tuple[Allocation, ...]) -> tuple[str, ...]:
    """A note for each of N, D and C that the approaches put beyond the fitted points (a range where they differ)."""
    notes = []
    for label, fitted, key in (("N", points.n, "n"), ("D", points.d, "d"), ("C", points.c, "compute")):
        values = np.array([getattr(a, key) for a in allocations], dtype=float)
        values = np.sort(values[np.isfinite(values)])
        if not len(values):
            continue
        low, high = float(fitted.min()), float(fitted.max())
        if values[0] > high:
            notes.append(f"extrapolation: {label} {_span(values)} is {_span(values / high, 'x')} the largest fitted "
                         f"({high:.3g})")
        elif values[-1] < low:
            notes.append(f"extrapolation: {label} {_span(values)} is {_span(low / values[::-1], 'x')} below the "
                         f"smallest fitted ({low:.3g})")
    return tuple(notes)


def _span(values: np.ndarray, unit: str = "") -> str:
    """'3.9e+11' where the sorted values agree, else '3.9e+11 .. 8.9e+11'."""
    if np.isclose(values[0], values[-1], rtol=1e-9):
        return f"{values[0]:.3g}{unit}"
    return f"{values[0]:.3g}{unit} .. {values[-1]:.3g}{unit}"


def predict(study: Study, given: str, value: float, vocab_size: Optional[int] = None) -> Prediction:
    """The prediction for `value` of `given`; `vocab_size` for the presets whose vocab_size is null
    (default: the fitted runs')."""
    if given not in GIVEN:
        raise UsageError(f"a prediction is given one of {', '.join(GIVEN)}, got {given!r}")
    if not value > 0:
        raise UsageError(f"--predict-{given} must be positive, got {value}")
    allocations = tuple(_allocate(study, approach, given, value) for approach in study.fitted)
    best = study.support.best if study.support is not None else None
    prediction = Prediction(given, float(value), allocations, best, None, None, None, None,
                            _extrapolation(study.points, allocations))
    chosen = prediction.chosen
    if not np.isfinite(chosen.n):
        return prediction
    if vocab_size:
        preset = nearest_preset(chosen.n, vocab_size, "--vocab-size")
    else:
        preset = nearest_preset(chosen.n, study.points.vocab_size)
    if preset is None:
        return prediction
    preset_tokens = chosen.compute / (6.0 * preset.params)
    preset_loss = interval = None
    if study.law is not None:
        preset_loss = float(study.law.law.loss(preset.params, preset_tokens))
        interval = study.interval([law.loss(preset.params, preset_tokens) for law in study.resampled("approach3")])
    return Prediction(given, float(value), allocations, best, preset, preset_tokens, preset_loss, interval,
                      prediction.notes)


@dataclass(frozen=True)
class Holdout:
    rule: str  # what was held out: "the largest model size (N = ...)" or "the points matching GLOB"
    law: Optional[Law]  # fitted without the held-out points; None: it could not be (`why`)
    names: tuple[str, ...]
    n: np.ndarray
    d: np.ndarray
    observed: np.ndarray
    predicted: np.ndarray  # NaN without a law
    why: str = ""

    @property
    def relative_error(self) -> np.ndarray:
        """(predicted - observed) / observed, per held-out point."""
        return (self.predicted - self.observed) / self.observed

    def to_dict(self) -> dict:
        if self.law is None:
            return {"rule": self.rule, "law": None, "not_fitted": self.why}
        err = self.relative_error
        return {"rule": self.rule, "law": vars(self.law), "mean_abs_relative_error": float(np.mean(np.abs(err))),
                "points": [{"name": name, "N": float(n), "D": float(d), "observed": float(o), "predicted": float(p),
                            "relative_error": float(e)}
                           for name, n, d, o, p, e in zip(self.names, self.n, self.d, self.observed, self.predicted,
                                                          err)]}


def select_holdout(points: Points, largest: bool = False, pattern: Optional[str] = None) -> tuple[np.ndarray, str]:
    """Which points to hold out (a boolean mask) and how to say so: the largest model size (`largest`) or
    the names matching `pattern` (fnmatch). A UsageError or DataError when the rest cannot be fitted."""
    if largest:
        held = np.zeros(len(points), dtype=bool)
        held[points.size_groups()[-1]] = True
        rule = f"the largest model size (N = {np.exp(np.mean(np.log(points.n[held]))):.3g})"
    else:
        assert pattern is not None, "select_holdout: the largest size or a pattern"
        held = np.array([fnmatch.fnmatchcase(name, pattern) for name in points.names])
        rule = f"the points matching {pattern!r}"
        if not held.any():
            raise UsageError(f"--holdout {pattern!r} matches none of the {len(points)} points (names such as "
                             f"{points.names[0]!r})")
    check_points(points.take(np.flatnonzero(~held)), f"without {rule}, ")
    return held, rule


def holdout(study: Study, largest: bool = False, pattern: Optional[str] = None) -> Holdout:
    """Approach 3 fitted on the study's points less those `select_holdout` picks, evaluated on those."""
    points = study.points
    held, rule = select_holdout(points, largest, pattern)
    rest = points.take(np.flatnonzero(~held))
    out = points.take(np.flatnonzero(held))
    try:
        law = fit_law(rest.n, rest.d, rest.loss, keep_best=study.options.keep_best).law
    except NotFitted as why:
        return Holdout(rule, None, out.names, out.n, out.d, out.loss, np.full(len(out), np.nan), str(why))
    return Holdout(rule, law, out.names, out.n, out.d, out.loss, law.loss(out.n, out.d))
