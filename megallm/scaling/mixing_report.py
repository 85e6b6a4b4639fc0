"""A mixing-law study as the printed table and as fit.json (plain numbers: lists and dicts)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from megallm.scaling.mixing import BASELINE_POWER, START_COUNT
from megallm.scaling.mixing_study import Holdout, Interval, MixingStudy, Optimum

Prediction = tuple[np.ndarray, np.ndarray, list[Interval]]  # proportions, losses, their intervals


def _span(value: float, span: Interval) -> str:
    return f"{value:.5g}" + (f" [{span[0]:.5g}, {span[1]:.5g}]" if span else "")


def mixture_text(sources: tuple[str, ...], r: np.ndarray) -> str:
    return ", ".join(f"{s} {p:.4g}" for s, p in zip(sources, r))


def render(study: MixingStudy, source: str, predictions: list[Prediction], held: Optional[Holdout],
           best: Optional[Optimum]) -> str:
    mix, options = study.mixtures, study.options
    lines = [f"{len(mix)} mixtures of {len(mix.sources)} training domains ({', '.join(mix.sources)}) from {source}; "
             f"losses on {len(mix.domains)} domains ({', '.join(mix.domains)})",
             f"law L_i(r) = c_i + k_i exp(sum_j t_ij r_j), t_{mix.sources[-1]} = 0 (the reference); least squares on "
             f"ln L, from the {options.keep_best} best of {START_COUNT} starts per domain"]
    if options.bootstrap:
        lines.append(f"intervals: {options.confidence:.0%} percentile, {options.bootstrap} bootstrap resamples of the "
                     f"mixtures (seed {options.seed})")
    for i, (domain, fit) in enumerate(zip(mix.domains, study.fits)):
        refits = f"; {study.fitted(i)}/{options.bootstrap} resamples refitted" if options.bootstrap else ""
        withheld = "" if study.has_intervals(i) or not options.bootstrap else " (too few: no intervals)"
        lines.append(f"\ndomain {domain}: RMSE {fit.rmse:.3g} over {len(mix)} mixtures{refits}{withheld}")
        bounds = study.parameter_intervals(i)
        values = {"c": fit.law.c, "k": fit.law.k, **{f"t_{s}": t for s, t in zip(mix.sources, fit.law.t)}}
        for name, value in values.items():
            shown = "0 (reference)" if name == f"t_{mix.sources[-1]}" else _span(value, bounds[name])
            lines.append(f"  {name:<{max(len(n) for n in values)}}  {shown}")
    for r, losses, spans in predictions:
        lines.append(f"\nprediction for {mixture_text(mix.sources, r)}:")
        width = max(len(d) for d in mix.domains) + 5
        lines += [f"  {'loss_' + d:<{width}}  {_span(v, s)}" for d, v, s in zip(mix.domains, losses, spans)]
    if held is not None:
        lines.append(f"\nholdout: the law fitted without {len(held.names)} mixtures, against the baseline (inverse-"
                     f"distance weighting, power {BASELINE_POWER:g}, of the {len(mix.sources)} nearest trained mixtures)")
        lines.append(f"  {'mixture':<20} {'domain':<10} {'observed':>9} {'law':>9} {'error':>9} {'baseline':>9} "
                     f"{'error':>9}")
        for h, name in enumerate(held.names):
            for i, domain in enumerate(mix.domains):
                obs, law, base = held.observed[h, i], held.law[h, i], held.baseline[h, i]
                lines.append(f"  {name:<20} {domain:<10} {obs:9.4f} {law:9.4f} {law - obs:+9.4f} {base:9.4f} "
                             f"{base - obs:+9.4f}")
        law_rmse, base_rmse = (float(np.sqrt(np.mean((p - held.observed) ** 2))) for p in (held.law, held.baseline))
        lines.append(f"  RMSE over the held-out losses: law {law_rmse:.4g}, baseline {base_rmse:.4g}")
    if best is not None:
        target = " + ".join(f"{w:g} x loss_{d}" for d, w in zip(mix.domains, best.weights) if w)
        bounded = [f"{s} in [{lo:g}, {hi:g}]" for s, lo, hi in zip(mix.sources, best.low, best.high) if lo > 0 or hi < 1]
        lines.append(f"\noptimal mixture for {target}" + (f" ({', '.join(bounded)})" if bounded else "") + ":")
        width = max(len(s) for s in mix.sources)
        lines += [f"  {s:<{width}}  {_span(p, span)}" for s, p, span in zip(mix.sources, best.proportions, best.intervals)]
        lines.append("  predicted: " + ", ".join(f"loss_{d} {_span(v, s)}" for d, v, s
                                                 in zip(mix.domains, best.losses, best.loss_intervals))
                     + f"; target {best.target:.5g}")
        if best.outside:
            lines.append(f"  note: beyond the shares tried: {'; '.join(best.outside)}; the law extrapolates there: "
                         "train that mixture to check")
    return "\n".join(lines)


def to_json(study: MixingStudy, source: str, predictions: list[Prediction], held: Optional[Holdout],
            best: Optional[Optimum]) -> dict:
    mix, options = study.mixtures, study.options
    domains = {}
    for i, (domain, fit) in enumerate(zip(mix.domains, study.fits)):
        domains[domain] = {"c": fit.law.c, "k": fit.law.k, "t": dict(zip(mix.sources, fit.law.t.tolist())),
                           "rmse": fit.rmse, "resamples_fitted": study.fitted(i),
                           "intervals": {name: list(span) if span else None
                                         for name, span in study.parameter_intervals(i).items()}}
    numbers: dict = {
        "source": source, "law": "L_i(r) = c_i + k_i exp(sum_j t_ij r_j)", "reference": mix.sources[-1],
        "options": {"bootstrap": options.bootstrap, "confidence": options.confidence, "seed": options.seed,
                    "starts": options.keep_best},
        "mixtures": [{"name": n, "proportions": dict(zip(mix.sources, r.tolist())),
                      "losses": dict(zip(mix.domains, loss.tolist()))}
                     for n, r, loss in zip(mix.names, mix.proportions, mix.losses)],
        "domains": domains,
        "predictions": [{"proportions": dict(zip(mix.sources, r.tolist())), "losses": dict(zip(mix.domains, v.tolist())),
                         "intervals": dict(zip(mix.domains, [list(s) if s else None for s in spans]))}
                        for r, v, spans in predictions]}
    if held is not None:
        numbers["holdout"] = [{"name": name, "observed": dict(zip(mix.domains, held.observed[h].tolist())),
                               "law": dict(zip(mix.domains, held.law[h].tolist())),
                               "baseline": dict(zip(mix.domains, held.baseline[h].tolist()))}
                              for h, name in enumerate(held.names)]
    if best is not None:
        numbers["optimum"] = {"weights": dict(zip(mix.domains, best.weights.tolist())),
                              "min": dict(zip(mix.sources, best.low.tolist())),
                              "max": dict(zip(mix.sources, best.high.tolist())),
                              "proportions": dict(zip(mix.sources, best.proportions.tolist())),
                              "intervals": dict(zip(mix.sources, [list(s) if s else None for s in best.intervals])),
                              "losses": dict(zip(mix.domains, best.losses.tolist())), "target": best.target,
                              "beyond_tried": best.outside}
    return numbers
