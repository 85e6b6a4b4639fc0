"""A study as text (the table `tools/scaling_law.py` prints) and as JSON (`fit.json`: every number)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from megallm.scaling.bootstrap import BOOTSTRAP_STARTS
from megallm.scaling.fit import PowerLaw
from megallm.scaling.parametric import HUBER_DELTA
from megallm.scaling.predict import Holdout, Prediction
from megallm.scaling.study import SAMPLE_FIELDS, TITLES, Study, approach_name

# A CSV's compute column and 6ND agree within this (Chinchilla's 6ND, read off a figure: within 0.1%) or
# the table says how far they part.
COMPUTE_AGREEMENT = 0.01
# A runner-up whose mean forecast error is within this factor of the best one's makes the verdict narrow.
NARROW = 1.25


def _g(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}"


def _with_interval(value: float, interval: Optional[tuple[float, float]], digits: int = 4) -> str:
    text = _g(value, digits)
    return f"{text:>10}  [{_g(interval[0], digits)}, {_g(interval[1], digits)}]" if interval else f"{text:>10}"


def describe_compute(study: Study) -> str:
    """Where C came from, and how far it parts from 6ND."""
    p = study.points
    if p.source == "runs":
        return "C: FLOPs per token (megallm.model.flops) x D"
    if p.compute_column is None:
        return "C = 6ND (the CSV has no compute column)"
    ratio = 6.0 * p.n * p.d / p.c
    if np.all(np.abs(ratio - 1.0) <= COMPUTE_AGREEMENT):
        return f"C from column {p.compute_column!r} (= 6ND within {100 * COMPUTE_AGREEMENT:g}%)"
    return (f"C from column {p.compute_column!r}, which approaches 1 and 2 group by (6ND/C ranges "
            f"{ratio.min():.3g} .. {ratio.max():.3g}; approach 3 allocates by C = 6ND)")


def _describe_points(study: Study, source: str) -> list[str]:
    p = study.points
    dropped = f", {len(study.dropped)} highest losses left out" if study.dropped else ""
    lines = [f"{len(p)} points from {source}{dropped}: {len(p.size_groups())} model sizes, N {_g(p.n.min(), 3)} .. "
             f"{_g(p.n.max(), 3)}, D {_g(p.d.min(), 3)} .. {_g(p.d.max(), 3)}, C {_g(p.c.min(), 3)} .. "
             f"{_g(p.c.max(), 3)} FLOPs", describe_compute(study)]
    if study.samples is not None:
        s = study.samples
        refitted = ", ".join(f"{approach_name(a)} {s.fitted(SAMPLE_FIELDS[a])} of {s.resamples}"
                             for a in study.fitted)
        grid = f" (approach 3 from the grid's {BOOTSTRAP_STARTS} best starts for each)" if study.law is not None else ""
        lines.append(f"intervals: {100 * study.options.confidence:g}% percentile bootstrap, {s.resamples} resamples "
                     f"(seed {s.seed}); refitted: {refitted}{grid}")
    else:
        lines.append("intervals: none (--bootstrap 0)")
    return lines


def _power_laws(study: Study, key: str, n_opt: PowerLaw, d_opt: PowerLaw) -> list[str]:
    intervals = study.intervals()
    labels = (f"a  (N_opt = {n_opt})", f"b  (D_opt = {d_opt})")
    width = max(24, *(len(label) for label in labels))
    lines = [f"  {labels[0]:<{width}}{_with_interval(n_opt.exponent, intervals.get(f'{key}.a'), 3)}",
             f"  {labels[1]:<{width}}{_with_interval(d_opt.exponent, intervals.get(f'{key}.b'), 3)}"]
    return lines + _withheld(study, key)


def _withheld(study: Study, key: str) -> list[str]:
    why = study.withheld().get(key)
    return [f"  intervals withheld: {why}"] if why else []


def render(study: Study, source: str, predictions: Sequence[Prediction] = (), held: Optional[Holdout] = None) -> str:
    lines = _describe_points(study, source)
    intervals = study.intervals()
    lines.append("")
    if study.envelope is not None:
        lines.append(f"approach 1: lower envelope of loss vs compute ({len(study.envelope.frontier)} frontier points)")
        lines += _power_laws(study, "approach1", study.envelope.n_opt, study.envelope.d_opt)
    else:
        lines.append(f"approach 1: not fitted: {study.not_fitted['approach1']}")
    if study.isoflop is not None:
        iso = study.isoflop
        how = "shared compute levels" if iso.mode == "levels" else "interpolated compute levels"
        lines.append(f"approach 2: IsoFLOP parabolas on {len(iso.levels)} {how} ({_g(iso.levels[0].compute, 3)} .. "
                     f"{_g(iso.levels[-1].compute, 3)} FLOPs)")
        lines += _power_laws(study, "approach2", iso.n_opt, iso.d_opt)
    else:
        lines.append(f"approach 2: not fitted: {study.not_fitted['approach2']}")
    if study.law is not None:
        fit = study.law
        law = fit.law
        lines.append(f"approach 3: L(N, D) = E + A/N^alpha + B/D^beta (summed Huber, delta 1e-3; L-BFGS-B from "
                     f"{fit.optimised} of {fit.starts} starts, {fit.converged} converged; objective "
                     f"{fit.objective:.6g})")
        for name in ("A", "B", "E", "alpha", "beta"):
            lines.append(f"  {name:<24}{_with_interval(getattr(law, name), intervals.get(f'approach3.{name}'))}")
        lines.append(f"  a = beta/(alpha+beta)   {_with_interval(law.a, intervals.get('approach3.a'), 3)}")
        lines.append(f"  b = alpha/(alpha+beta)  {_with_interval(law.b, intervals.get('approach3.b'), 3)}")
        lines.append(f"  G (N_opt = G (C/6)^a)   {_with_interval(law.G, intervals.get('approach3.G'), 3)}")
        lines += _withheld(study, "approach3")
        lines += [f"  note: {note}" for note in law_warnings(study)]
    else:
        lines.append(f"approach 3: not fitted: {study.not_fitted['approach3']}")
    lines += describe_support(study)
    for prediction in predictions:
        lines += [""] + describe_prediction(study, prediction)
    if held is not None:
        lines += [""] + describe_holdout(held)
    return "\n".join(lines)


def law_warnings(study: Study) -> list[str]:
    """What makes approach 3's law untrustworthy beyond its points: an irreducible loss the points barely pin."""
    assert study.law is not None  # the report's approach 3 section: it fitted
    points, law = study.points, study.law.law
    if law.E >= 0.05 * float(points.loss.min()):
        return []
    per_parameter = points.d / points.n
    return [f"E is {law.E:.3g}, under 5% of the smallest loss: these points barely pin the irreducible loss (they "
            f"are at {per_parameter.min():.2g}-{per_parameter.max():.2g} tokens per parameter; Chinchilla's optimum "
            "is about 20), so the law interpolates, but its predictions far outside the points and its "
            "compute-optimal split are not to be trusted"]


def describe_support(study: Study) -> list[str]:
    """Which approach the points support best, and the forecasts that say so."""
    s = study.support
    if s is None:
        return [f"which approach the points support: no verdict ({study.no_verdict})"]
    errors, best = s.errors, s.best
    assert best is not None  # support.check gives a Support only with a best approach
    means = ", ".join(f"{approach_name(a)} {100 * (np.exp(error) - 1):.0f}%" for a, error in errors.items())
    others = [error for a, error in errors.items() if a != best]
    margin = " (narrowly)" if others and min(others) < NARROW * errors[best] else ""
    lines = [f"which approach the points support: {approach_name(best)} best{margin}. Forecasting N_opt at each "
             f"of the {len(s.forecasts)} largest compute levels from the points below it, the approaches miss the "
             f"level's parabola minimum by (geometric mean over the levels): {means}"]
    for f in s.forecasts:
        each = ", ".join(f"{approach_name(a)} {_g(n, 3)} ({100 * (n / f.observed - 1):+.0f}%)"
                         for a, n in f.predicted.items())
        missing = "".join(f"; {approach_name(a)} not fitted below it: {why}" for a, why in f.not_fitted.items())
        lines.append(f"  {_g(f.compute, 3)} FLOPs ({f.size} points, minimum at N {_g(f.observed, 3)}): {each}{missing}")
    return lines


def describe_prediction(study: Study, p: Prediction) -> list[str]:
    unit = {"compute": "FLOPs", "params": "parameters", "tokens": "tokens"}[p.given]
    rows = [(TITLES[a.approach], _with_interval(a.n, a.intervals.get("n"), 3).strip(),
             _with_interval(a.d, a.intervals.get("d"), 3).strip(), f"{a.d / a.n:.3g}",
             _with_interval(a.loss, a.intervals.get("loss")).strip() if a.loss is not None else "-",
             "<- best supported" if a.approach == p.best else "") for a in p.allocations]
    header = ("", "N", "D", "D/N", "loss", "")
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]
    lines = [f"prediction for {_g(p.value)} {unit} (compute-optimal, by each approach; approach 3 under C = 6ND):"]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
              for row in [header, *rows]]
    if p.preset is not None:
        preset = p.preset
        assert p.preset_tokens is not None  # predict gives a preset with its tokens
        vocab = f"vocabulary {preset.vocab_size}" + ("" if preset.vocab_source == "preset"
                                                      else f", {preset.vocab_source}, as its vocab_size is null")
        loss = ("" if p.preset_loss is None else
                f", loss {_with_interval(p.preset_loss, p.preset_interval).strip()} by approach 3's law")
        lines.append(f"  nearest preset: +model={preset.name} ({_g(preset.params, 3)} parameters, {vocab}; nearest to "
                     f"{approach_name(p.chosen.approach)}'s N): {_g(p.preset_tokens, 3)} tokens for this compute{loss}")
    lines += [f"  note: {note}" for note in p.notes]
    return lines


def describe_holdout(held: Holdout) -> list[str]:
    if held.law is None:
        return [f"holdout: approach 3 cannot be fitted without {held.rule}: {held.why}"]
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
                       "(runs: megallm.model.flops per token x D; CSV: its compute column, else 6ND); approach 3 "
                       "allocation: C = 6ND",
        "compute": describe_compute(study),
        "intervals": intervals,
        "bootstrap": None if study.samples is None else {
            "resamples": study.samples.resamples, "seed": study.samples.seed,
            "confidence": study.options.confidence, "approach3_starts": BOOTSTRAP_STARTS,
            "fitted": {a: study.samples.fitted(SAMPLE_FIELDS[a]) for a in study.fitted},
            "withheld": study.withheld()},
        "not_fitted": dict(study.not_fitted),
        "support": study.support.to_dict() if study.support is not None else {"no_verdict": study.no_verdict},
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
    if study.law is not None:
        law = study.law.law
        out["approach3"] = {**vars(law), "a": law.a, "b": law.b, "G": law.G, "objective": study.law.objective,
                            "huber_delta": HUBER_DELTA, "starts": study.law.starts,
                            "optimised_starts": study.law.optimised, "converged_starts": study.law.converged}
    out["predictions"] = [prediction.to_dict() for prediction in predictions]
    out["holdout"] = held.to_dict() if held is not None else None
    return out
