"""What the fitted law recommends, and how well it predicts runs it has not seen.

- `predict`: given a compute budget, a parameter count or a token count, the compute-optimal N and D
  under approach 3 (C = 6ND, as Hoffmann et al.), the expected loss with its bootstrap interval, a
  note wherever that extrapolates beyond the fitted points, and the `conf/model/` preset nearest in
  parameters (with the tokens the same compute buys it and its expected loss).
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
def presets(vocab_size: Optional[int]) -> tuple[Preset, ...]:
    """Every conf/model/ preset's parameter count; a null vocab_size takes `vocab_size` (the fitted
    runs'), else CSV_PRESET_VOCAB."""
    out = []
    for name in available("model"):
        path = CONF_DIR / "model" / f"{name}.yaml"
        try:
            model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path)))
        except (OSError, OmegaConfBaseException, YAMLError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path} is not a model config: {str(exc).splitlines()[0]}") from exc
        source = "preset"
        if model.vocab_size is None:
            model.vocab_size = vocab_size or CSV_PRESET_VOCAB
            source = "the fitted runs'" if vocab_size else "the default for a CSV input"
        out.append(Preset(name, parameter_count(model).total, model.vocab_size, source))
    return tuple(out)


def nearest_preset(n: float, vocab_size: Optional[int]) -> Optional[Preset]:
    """The preset whose parameter count is nearest to `n` in ratio."""
    return min(presets(vocab_size), key=lambda p: abs(np.log(p.params / n)), default=None)


@dataclass(frozen=True)
class Prediction:
    given: str  # "compute", "params" or "tokens"
    value: float
    n: float
    d: float
    compute: float  # 6 N D
    loss: float
    intervals: dict[str, Optional[tuple[float, float]]]  # n, d, loss, preset_loss
    preset: Optional[Preset]
    preset_tokens: Optional[float]  # tokens the same compute buys the preset: C / (6 N_preset)
    preset_loss: Optional[float]
    notes: tuple[str, ...]  # extrapolation beyond the fitted points

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("given", "value", "n", "d", "compute", "loss", "preset_tokens",
                                              "preset_loss")}
        out["intervals"] = {k: list(v) if v else None for k, v in self.intervals.items()}
        out["preset"] = vars(self.preset) if self.preset else None
        out["notes"] = list(self.notes)
        return out


def _allocation(law: Law, given: str, value: float) -> tuple[float, float]:
    """Compute-optimal (N, D) for the given compute, parameters or tokens."""
    compute = {"compute": lambda: value, "params": lambda: law.compute_for_params(value),
               "tokens": lambda: law.compute_for_tokens(value)}[given]()
    n = float(law.n_opt(compute))
    return n, float(compute) / 6.0 / n


def _extrapolation(points: Points, n: float, d: float, compute: float) -> tuple[str, ...]:
    notes = []
    for label, value, fitted in (("N", n, points.n), ("D", d, points.d), ("C = 6ND", compute, 6 * points.n * points.d)):
        low, high = float(fitted.min()), float(fitted.max())
        if value > high:
            notes.append(f"extrapolation: {label} {value:.3g} is {value / high:.3g}x the largest fitted ({high:.3g})")
        elif value < low:
            notes.append(f"extrapolation: {label} {value:.3g} is {low / value:.3g}x below the smallest fitted "
                         f"({low:.3g})")
    return tuple(notes)


def predict(study: Study, given: str, value: float) -> Prediction:
    if given not in GIVEN:
        raise UsageError(f"a prediction is given one of {', '.join(GIVEN)}, got {given!r}")
    if not value > 0:
        raise UsageError(f"--predict-{given} must be positive, got {value}")
    law = study.law.law
    n, d = _allocation(law, given, value)
    compute = 6.0 * n * d
    preset = nearest_preset(n, study.points.vocab_size)
    preset_tokens = compute / (6.0 * preset.params) if preset else None
    preset_loss = float(law.loss(preset.params, preset_tokens)) if preset else None
    samples = [(*_allocation(s, given, value), s) for s in study.laws()]
    intervals = {}
    if samples:
        intervals = {"n": study.interval([s[0] for s in samples]), "d": study.interval([s[1] for s in samples]),
                     "loss": study.interval([s[2].loss(s[0], s[1]) for s in samples])}
        if preset:
            intervals["preset_loss"] = study.interval([s[2].loss(preset.params, preset_tokens) for s in samples])
    return Prediction(given, float(value), n, d, compute, float(law.loss(n, d)), intervals, preset, preset_tokens,
                      preset_loss, _extrapolation(study.points, n, d, compute))


@dataclass(frozen=True)
class Holdout:
    rule: str  # what was held out: "the largest model size (N = ...)" or "the points matching GLOB"
    law: Law  # fitted without the held-out points
    names: tuple[str, ...]
    n: np.ndarray
    d: np.ndarray
    observed: np.ndarray
    predicted: np.ndarray

    @property
    def relative_error(self) -> np.ndarray:
        """(predicted - observed) / observed, per held-out point."""
        return (self.predicted - self.observed) / self.observed

    def to_dict(self) -> dict:
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
    law = fit_law(rest.n, rest.d, rest.loss, keep_best=study.options.keep_best).law
    out = points.take(np.flatnonzero(held))
    return Holdout(rule, law, out.names, out.n, out.d, out.loss, law.loss(out.n, out.d))
