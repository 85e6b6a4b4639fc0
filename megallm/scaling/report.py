"""A study as text (the table `tools/scaling_law.py` prints) and as JSON (`fit.json`: every number)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from megallm.scaling.fit import PowerLaw
from megallm.scaling.parametric import HUBER_DELTA
from megallm.scaling.predict import Holdout, Prediction
from megallm.scaling.study import Study


def _g(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}"


def _with_interval(value: float, interval: Optional[tuple[float, float]], digits: int = 4) -> str:
    text = _g(value, digits)
    return f"{text:>10}  [{_g(interval[0], digits)}, {_g(interval[1], digits)}]" if interval else f"{text:>10}"


def _describe_points(study: Study, source: str) -> list[str]:
    p = study.points
    dropped = f", {len(study.dropped)} highest losses left out" if study.dropped else ""
    lines = [f"{len(p)} points from {source}{dropped}: {len(p.size_groups())} model sizes, N {_g(p.n.min(), 3)} .. "
             f"{_g(p.n.max(), 3)}, D {_g(p.d.min(), 3)} .. {_g(p.d.max(), 3)}, C {_g(p.c.min(), 3)} .. "
             f"{_g(p.c.max(), 3)} FLOPs"]
    if study.samples is not None:
        s = study.samples
        lines.append(f"intervals: {100 * study.options.confidence:g}% percentile bootstrap, {s.resamples} resamples "
                     f"(seed {s.seed}); refitted: approach 1 {s.fitted('envelope')}, approach 2 "
                     f"{s.fitted('isoflop')}, approach 3 {s.fitted('laws')}")
    else:
        lines.append("intervals: none (--bootstrap 0)")
    return lines


def _exponents(study: Study, key: str, n_opt: PowerLaw, d_opt: PowerLaw) -> list[str]:
    intervals = study.intervals()
    return [f"  a  (N_opt ∝ C^a)         {_with_interval(n_opt.exponent, intervals.get(f'{key}.a'), 3)}",
            f"  b  (D_opt ∝ C^b)         {_with_interval(d_opt.exponent, intervals.get(f'{key}.b'), 3)}"]


def render(study: Study, source: str, predictions: Sequence[Prediction] = (), held: Optional[Holdout] = None) -> str:
    lines = _describe_points(study, source)
    intervals = study.intervals()
    lines.append("")
    if study.envelope is not None:
        lines.append(f"approach 1: lower envelope of loss vs compute ({len(study.envelope.frontier)} frontier points)")
        lines += _exponents(study, "approach1", study.envelope.n_opt, study.envelope.d_opt)
    else:
        lines.append(f"approach 1: not fitted: {study.not_fitted['envelope']}")
    if study.isoflop is not None:
        iso = study.isoflop
        how = "shared compute levels" if iso.mode == "levels" else "interpolated compute levels"
        lines.append(f"approach 2: IsoFLOP parabolas on {len(iso.levels)} {how} ({_g(iso.levels[0].compute, 3)} .. "
                     f"{_g(iso.levels[-1].compute, 3)} FLOPs)")
        lines += _exponents(study, "approach2", iso.n_opt, iso.d_opt)
    else:
        lines.append(f"approach 2: not fitted: {study.not_fitted['isoflop']}")
    fit = study.law
    law = fit.law
    lines.append(f"approach 3: L(N, D) = E + A/N^alpha + B/D^beta (summed Huber, delta 1e-3; L-BFGS-B from "
                 f"{fit.optimised} of {fit.starts} starts; objective {fit.objective:.6g})")
    for name in ("A", "B", "E", "alpha", "beta"):
        lines.append(f"  {name:<24}{_with_interval(getattr(law, name), intervals.get(f'approach3.{name}'))}")
    lines.append(f"  a = beta/(alpha+beta)   {_with_interval(law.a, intervals.get('approach3.a'), 3)}")
    lines.append(f"  b = alpha/(alpha+beta)  {_with_interval(law.b, intervals.get('approach3.b'), 3)}")
    lines.append(f"  G (N_opt = G (C/6)^a)   {_with_interval(law.G, intervals.get('approach3.G'), 3)}")
    lines += [f"  note: {note}" for note in law_warnings(study)]
    for prediction in predictions:
        lines += [""] + describe_prediction(study, prediction)
    if held is not None:
        lines += [""] + describe_holdout(held)
    return "\n".join(lines)


def law_warnings(study: Study) -> list[str]:
    """What makes approach 3's law untrustworthy beyond its points: an irreducible loss the points do not pin."""
    points, law = study.points, study.law.law
    if law.E >= 0.05 * float(points.loss.min()):
        return []
    per_parameter = points.d / points.n
    return [f"E ran to {law.E:.3g}: these points do not pin the irreducible loss (they are at "
            f"{per_parameter.min():.2g}-{per_parameter.max():.2g} tokens per parameter, far from convergence; "
            "Chinchilla's optimum is about 20), so the law interpolates, but its predictions far outside the "
            "points and its compute-optimal split are not to be trusted; train longer budgets"]


def describe_prediction(study: Study, p: Prediction) -> list[str]:
    unit = {"compute": "FLOPs", "params": "parameters", "tokens": "tokens"}[p.given]
    lines = [f"prediction for {_g(p.value)} {unit} (approach 3, compute-optimal, C = 6ND = {_g(p.compute, 3)}):",
             f"  N          {_with_interval(p.n, p.intervals.get('n'), 3)}",
             f"  D          {_with_interval(p.d, p.intervals.get('d'), 3)}   ({p.d / p.n:.3g} tokens per parameter)",
             f"  loss       {_with_interval(p.loss, p.intervals.get('loss'))}"]
    if p.preset is not None:
        preset = p.preset
        vocab = f"vocabulary {preset.vocab_size}" + ("" if preset.vocab_source == "preset"
                                                      else f", {preset.vocab_source}, as its vocab_size is null")
        lines.append(f"  nearest preset: +model={preset.name} ({_g(preset.params, 3)} parameters, {vocab}): "
                     f"{_g(p.preset_tokens, 3)} tokens for this compute, loss "
                     f"{_with_interval(p.preset_loss, p.intervals.get('preset_loss')).strip()}")
    lines += [f"  note: {note}" for note in p.notes]
    return lines


def describe_holdout(held: Holdout) -> list[str]:
    err = 100 * held.relative_error
    count = len(held.names)
    lines = [f"holdout: approach 3 fitted without {held.rule}, {count} point{'s' * (count != 1)} "
             f"(A {_g(held.law.A)}, B {_g(held.law.B)}, E {_g(held.law.E)}, alpha {_g(held.law.alpha)}, "
             f"beta {_g(held.law.beta)}); its error on them:"]
    for name, o, p, e in zip(held.names, held.observed, held.predicted, err):
        lines.append(f"  {name:<30} observed {o:.4f}  predicted {p:.4f}  error {e:+.2f}%")
    lines.append(f"  mean |error| {np.mean(np.abs(err)):.2f}%, max |error| {np.max(np.abs(err)):.2f}%")
    return lines


def to_json(study: Study, source: str, predictions: Sequence[Prediction] = (), held: Optional[Holdout] = None) -> dict:
    p = study.points
    intervals = {k: list(v) if v else None for k, v in study.intervals().items()}
    out = {
        "source": source,
        "options": vars(study.options),
        "points": [{"name": name, "N": float(n), "D": float(d), "C": float(c), "loss": float(loss)}
                   for name, n, d, c, loss in zip(p.names, p.n, p.d, p.c, p.loss)],
        "dropped": list(study.dropped),
        "conventions": "N: total parameters (embeddings included); D: training tokens; C: training FLOPs "
                       "(runs: megallm.model.flops per token x D; CSV: as given); approach 3 allocation: C = 6ND",
        "intervals": intervals,
        "bootstrap": None if study.samples is None else {
            "resamples": study.samples.resamples, "seed": study.samples.seed,
            "confidence": study.options.confidence,
            "fitted": {k: study.samples.fitted(k) for k in ("envelope", "isoflop", "laws")}},
        "not_fitted": dict(study.not_fitted),
    }
    if study.envelope is not None:
        e = study.envelope
        out["approach1"] = {"a": e.n_opt.exponent, "b": e.d_opt.exponent, "n_opt": vars(e.n_opt),
                            "d_opt": vars(e.d_opt), "frontier": [p.names[i] for i in e.frontier]}
    if study.isoflop is not None:
        iso = study.isoflop
        out["approach2"] = {"a": iso.n_opt.exponent, "b": iso.d_opt.exponent, "mode": iso.mode,
                            "n_opt": vars(iso.n_opt), "d_opt": vars(iso.d_opt), "levels_without_minimum": iso.skipped,
                            "levels": [{"C": lv.compute, "N_opt": lv.n_opt, "D_opt": lv.d_opt, "loss_opt": lv.loss_opt,
                                        "sizes": len(lv.n), "parabola_ln_n": [float(c) for c in lv.parabola]}
                                       for lv in iso.levels]}
    law = study.law.law
    out["approach3"] = {**vars(law), "a": law.a, "b": law.b, "G": law.G, "objective": study.law.objective,
                        "huber_delta": HUBER_DELTA, "starts": study.law.starts, "optimised_starts": study.law.optimised}
    out["predictions"] = [prediction.to_dict() for prediction in predictions]
    out["holdout"] = held.to_dict() if held is not None else None
    return out
