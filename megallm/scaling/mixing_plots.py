"""A mixing-law study's figures as PNG files (matplotlib's object API on the Agg canvas, as plots.py).

- mixing_fit.png        per evaluated domain: the law's loss against the observed loss at every trained
                        mixture (held-out ones marked, predicted by the law fitted without them)
- mixing_path_<s>.png   per training domain s: every evaluated domain's predicted loss (bootstrap band) as
                        s's share goes from 0 to 1 with the other domains in the proportions of the optimum
                        (or the uniform mixture), the trained mixtures' shares of s marked
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from megallm.scaling.bootstrap import interval
from megallm.scaling.mixing_study import Holdout, MixingStudy, Optimum

DPI = 100
PATH_POINTS = 101


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(str(path))
    return path


def fit_figure(study: MixingStudy, held: Optional[Holdout], path: Path) -> Path:
    mix = study.mixtures
    figure = Figure(figsize=(4 * len(mix.domains), 4), dpi=DPI)
    for i, (domain, law) in enumerate(zip(mix.domains, study.laws)):
        ax = figure.add_subplot(1, len(mix.domains), i + 1)
        observed, predicted = mix.losses[:, i], law.loss(mix.proportions)
        ax.scatter(observed, predicted, s=18, label="fitted mixtures")
        values = [observed, predicted]
        if held is not None:
            ax.scatter(held.observed[:, i], held.law[:, i], marker="x", color="C3", label="held out (law without them)")
            values += [held.observed[:, i], held.law[:, i]]
        low, high = min(v.min() for v in values), max(v.max() for v in values)
        ax.plot([low, high], [low, high], color="gray", linewidth=0.8)
        ax.set(title=f"{domain} (RMSE {study.fits[i].rmse:.3g})", xlabel="observed loss", ylabel="law's loss")
        ax.legend(fontsize=7)
    return _save(figure, path)


def path_figure(study: MixingStudy, source: int, base: np.ndarray, path: Path) -> Path:
    """Loss against training domain `source`'s share, the others in `base`'s proportions."""
    mix = study.mixtures
    rest = np.delete(base, source)
    rest = rest / rest.sum() if rest.sum() > 0 else np.full(len(rest), 1 / len(rest))
    shares = np.linspace(0, 1, PATH_POINTS)
    r = np.array([np.insert((1 - s) * rest, source, s) for s in shares])
    figure = Figure(figsize=(6, 4), dpi=DPI)
    ax = figure.add_subplot()
    for i, (domain, law) in enumerate(zip(mix.domains, study.laws)):
        line, = ax.plot(shares, law.loss(r), label=f"loss_{domain}")
        if study.has_intervals(i):
            curves = np.array([sample.loss(r) for sample in study.sample_laws(i)])
            band = np.array([interval(column, study.options.confidence) for column in curves.T])
            ax.fill_between(shares, band[:, 0], band[:, 1], color=line.get_color(), alpha=0.2)
        ax.scatter(mix.proportions[:, source], mix.losses[:, i], s=12, color=line.get_color())
    others = ", ".join(f"{s} {p:.2g}" for s, p in zip(np.delete(np.array(mix.sources), source), rest))
    ax.set(xlabel=f"share of {mix.sources[source]} (the rest: {others})", ylabel="validation loss",
           title=f"the law along {mix.sources[source]}'s share")
    ax.legend(fontsize=7)
    return _save(figure, path)


def draw_all(study: MixingStudy, folder: Path, held: Optional[Holdout], best: Optional[Optimum]) -> list[Path]:
    base = best.proportions if best is not None else np.full(len(study.mixtures.sources), 1 / len(study.mixtures.sources))
    paths = [fit_figure(study, held, folder / "mixing_fit.png")]
    paths += [path_figure(study, j, base, folder / f"mixing_path_{s}.png") for j, s in enumerate(study.mixtures.sources)]
    return paths
