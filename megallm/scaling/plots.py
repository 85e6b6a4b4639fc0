"""The study's figures as PNG files, drawn with matplotlib's object API on the Agg canvas (no pyplot:
no global figure state, no display needed).

- loss_vs_compute.png  approach 1: final loss against compute per model size, and the frontier
- isoflop.png          approach 2: loss against N on each compute level with its parabola and minimum,
                       and N_opt against C with the power law
- parametric.png       approach 3: fitted against observed loss (held-out points marked)
- n_opt.png            N_opt(C) of every approach fitted, over the fitted compute and a decade beyond
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from megallm.scaling.predict import Holdout
from megallm.scaling.study import Study

DPI = 100


def _save(figure: Figure, path: Path) -> Path:
    for ax in figure.axes:  # a log axis spanning under a decade labels its minor ticks, which then overlap
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                axis.set_minor_formatter(NullFormatter())
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI)
    return path


def loss_vs_compute(study: Study, path: Path) -> Path:
    p = study.points
    figure = Figure(figsize=(7, 5), layout="constrained")
    ax = figure.add_subplot()
    norm = LogNorm(p.n.min(), p.n.max() if p.n.max() > p.n.min() else p.n.min() * 10)
    cmap = colormaps["viridis"]
    for group in p.size_groups():
        order = group[np.argsort(p.c[group])]
        if len(order) > 1:
            ax.plot(p.c[order], p.loss[order], color=cmap(norm(np.mean(p.n[group]))), linewidth=0.8, alpha=0.6)
    dots = ax.scatter(p.c, p.loss, c=p.n, cmap=cmap, norm=norm, s=14, zorder=3)
    figure.colorbar(dots, ax=ax, label="parameters N")
    if study.envelope is not None:
        edge = study.envelope.frontier
        ax.plot(p.c[edge], p.loss[edge], "k-", linewidth=1.5, zorder=4, label=f"frontier ({len(edge)} points)")
        ax.legend()
    ax.set(xscale="log", xlabel="training compute C (FLOPs)", ylabel="final loss",
           title="Approach 1: loss vs compute per model size")
    return _save(figure, path)


def isoflop(study: Study, path: Path) -> Optional[Path]:
    iso = study.isoflop
    if iso is None:
        return None
    figure = Figure(figsize=(12, 5), layout="constrained")
    left, right = figure.subplots(1, 2)
    cmap = colormaps["plasma"]
    computes = np.array([level.compute for level in iso.levels])
    norm = LogNorm(computes.min(), computes.max() if computes.max() > computes.min() else computes.min() * 10)
    for level in iso.levels:
        color = cmap(norm(level.compute) * 0.85)
        left.scatter(level.n, level.loss, color=color, s=12)
        x = np.linspace(np.log(level.n.min()), np.log(level.n.max()), 100)
        left.plot(np.exp(x), np.polyval(level.parabola, x), color=color, linewidth=1)
        left.plot(level.n_opt, level.loss_opt, marker="*", color=color, markersize=11, markeredgecolor="k")
    how = "shared" if iso.mode == "levels" else "interpolated"
    left.set(xscale="log", xlabel="parameters N", ylabel="final loss",
             title=f"Approach 2: IsoFLOP parabolas ({len(iso.levels)} {how} levels)")
    right.scatter(computes, [level.n_opt for level in iso.levels], color="k", s=18, label="parabola minima")
    grid = np.geomspace(computes.min(), computes.max(), 50)
    right.plot(grid, iso.n_opt(grid), "C1-", label=f"N_opt ∝ C^{iso.n_opt.exponent:.3f}")
    right.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="N_opt",
              title="Approach 2: compute-optimal model size")
    right.legend()
    return _save(figure, path)


def parametric(study: Study, path: Path, held: Optional[Holdout] = None) -> Path:
    p, law = study.points, study.law.law
    figure = Figure(figsize=(6, 6), layout="constrained")
    ax = figure.add_subplot()
    fitted = law.loss(p.n, p.d)
    ax.scatter(p.loss, fitted, s=12, label="fitted points")
    if held is not None:
        ax.scatter(held.observed, held.predicted, s=40, marker="x", color="C3",
                   label=f"held out ({held.rule}), law fitted without them")
    low, high = min(p.loss.min(), fitted.min()), max(p.loss.max(), fitted.max())
    ax.plot([low, high], [low, high], "k--", linewidth=1, label="fitted = observed")
    ax.set(xlabel="observed final loss", ylabel="L(N, D)")
    ax.set_title(f"Approach 3: L(N, D) = E + A/N^alpha + B/D^beta\nE {law.E:.3g}, A {law.A:.4g}, alpha {law.alpha:.3f}, "
                 f"B {law.B:.4g}, beta {law.beta:.3f}", fontsize="medium")
    ax.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def n_opt(study: Study, path: Path) -> Path:
    p = study.points
    grid = np.geomspace(p.c.min(), p.c.max() * 10, 100)
    figure = Figure(figsize=(7, 5), layout="constrained")
    ax = figure.add_subplot()
    law = study.law.law
    ax.plot(grid, law.n_opt(grid), label=f"approach 3: N_opt ∝ C^{law.a:.3f}")
    if study.envelope is not None:
        e = study.envelope
        ax.plot(grid, e.n_opt(grid), label=f"approach 1: N_opt ∝ C^{e.n_opt.exponent:.3f}")
        ax.scatter(p.c[e.frontier], p.n[e.frontier], s=10, color="C1", alpha=0.6)
    if study.isoflop is not None:
        iso = study.isoflop
        ax.plot(grid, iso.n_opt(grid), label=f"approach 2: N_opt ∝ C^{iso.n_opt.exponent:.3f}")
        ax.scatter([lv.compute for lv in iso.levels], [lv.n_opt for lv in iso.levels], s=18, color="C2", marker="*")
    ax.axvline(p.c.max(), color="grey", linestyle=":", linewidth=1, label="largest fitted compute")
    ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="compute-optimal parameters N_opt",
           title="Compute-optimal model size")
    ax.legend()
    return _save(figure, path)


def draw_all(study: Study, folder: Path, held: Optional[Holdout] = None) -> list[Path]:
    """Every figure the study supports, written into `folder`."""
    written = [loss_vs_compute(study, folder / "loss_vs_compute.png"), isoflop(study, folder / "isoflop.png"),
               parametric(study, folder / "parametric.png", held), n_opt(study, folder / "n_opt.png")]
    return [path for path in written if path is not None]
