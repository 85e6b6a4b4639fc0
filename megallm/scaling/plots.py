"""The study's figures as PNG files, drawn with matplotlib's object API on the Agg canvas (no pyplot:
no global figure state, no display needed). Laid out as Hoffmann et al.'s Figures 2-4 and Epoch AI's
replication draw them: each law's coefficients in its legend entry, its bootstrap interval as a band,
every prediction's target marked, and units on every axis.

- loss_vs_compute.png     approach 1: final loss against compute per model size (colorbar: N), the frontier
- isoflop.png             approach 2: loss against N on each compute level (legend: its budget) with its
                          parabola and minimum; N_opt(C) and D_opt(C) through the minima
- compute_optimal.png     N_opt(C) beside D_opt(C), every approach fitted, over the fitted compute and on to
                          the largest prediction (or a decade beyond)
- parametric.png          approach 3: fitted against observed loss (held-out points marked)
- parametric_contours.png approach 3: iso-loss contours of L(N, C/6N) over compute and N, and the
                          efficient frontier N_opt(C)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator, NullFormatter

from megallm.scaling.predict import Holdout, Prediction
from megallm.scaling.study import Study, approach_name

DPI = 100
COLORS = {"approach1": "C0", "approach2": "C1", "approach3": "C2"}
COMPUTE_LABEL = "training compute C (FLOPs)"
PARAMS_LABEL = "parameters N"
TOKENS_LABEL = "training tokens D"


def _save(figure: Figure, path: Path) -> Path:
    for ax in figure.axes:  # a log axis spanning under a decade labels its minor ticks, which then overlap
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log" and _decades(axis.get_view_interval()) >= 1:
                axis.set_minor_formatter(NullFormatter())
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI)
    return path


def _decades(interval) -> float:
    low, high = sorted(float(v) for v in interval)
    return np.log10(high / low) if low > 0 else np.inf


def loss_unit(study: Study) -> str:
    return "(nats/token)" if study.points.source == "runs" else "(the table's units)"


def loss_label(study: Study) -> str:
    return f"final {'validation ' * (study.points.source == 'runs')}loss {loss_unit(study)}"


def _compute_grid(study: Study, predictions: Sequence[Prediction], points: int = 100) -> np.ndarray:
    """From the smallest fitted compute to the largest prediction's (or a decade beyond the points)."""
    c = study.points.c
    targets = [a.compute for p in predictions for a in p.allocations if np.isfinite(a.compute)]
    high = max([c.max() * 10] + [t * 2 for t in targets])
    return np.geomspace(c.min() / 1.5, high, points)


def _optimal_curves(study: Study, approach: str, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, str, str]:
    """N_opt and D_opt over `grid` by an approach, and the legend text of each (its coefficients)."""
    if approach == "approach3":
        assert study.law is not None  # a fitted approach (study.fitted)
        law = study.law.law
        return (law.n_opt(grid), law.d_opt(grid), f"N_opt = {law.G:.3g} (C/6)^{law.a:.3f}",
                f"D_opt = {1 / law.G:.3g} (C/6)^{law.b:.3f}")
    laws = study.power_laws(approach)
    assert laws is not None  # a fitted approach (study.fitted)
    n_opt, d_opt = laws
    return n_opt(grid), d_opt(grid), f"N_opt = {n_opt}", f"D_opt = {d_opt}"


def _bands(study: Study, approach: str, grid: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The bootstrap's (N_opt, D_opt) intervals over `grid`, rows (low, high); None without resamples."""
    fits = study.resampled(approach)
    if len(fits) < 2:
        return None
    with np.errstate(over="ignore", invalid="ignore"):  # a resample's law far from the points: inf, left out
        if approach == "approach3":
            n = np.array([law.n_opt(grid) for law in fits])
            d = np.array([law.d_opt(grid) for law in fits])
        else:
            n = np.array([n_opt(grid) for n_opt, _ in fits])
            d = np.array([d_opt(grid) for _, d_opt in fits])
    tail = 50.0 * (1.0 - study.options.confidence)
    return np.nanpercentile(n, [tail, 100 - tail], axis=0), np.nanpercentile(d, [tail, 100 - tail], axis=0)


def _interval_text(study: Study, key: str) -> str:
    interval = study.intervals().get(key)
    return f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""


def _mark_predictions(axes: Sequence[Axes], predictions: Sequence[Prediction], approaches: Sequence[str]) -> None:
    """Each prediction's target: a dotted line at its compute, and each approach's N (left) and D (right)
    with its interval."""
    for p in predictions:
        drawn = [a for a in p.allocations if a.approach in approaches and np.isfinite(a.compute)]
        for k, a in enumerate(drawn):
            shift = 10 ** (0.05 * (k - (len(drawn) - 1) / 2))  # side by side where they coincide
            for ax, value, key in ((axes[0], a.n, "n"), (axes[1], a.d, "d")):
                interval = a.intervals.get(key)
                error = None if not interval else [[max(value - interval[0], 0)], [max(interval[1] - value, 0)]]
                ax.errorbar([a.compute * shift], [value], yerr=error, marker="*", markersize=13,
                            color=COLORS[a.approach], markeredgecolor="k", capsize=4, zorder=5, linestyle="none")
        target = p.chosen.compute
        unit = {"compute": "FLOPs", "params": "parameters", "tokens": "tokens"}[p.given]
        for ax in axes:
            _vertical(ax, target, f"target: {p.value:.3g} {unit}", ":")


def _vertical(ax: Axes, compute: float, text: str, style: str) -> None:
    """A vertical line at `compute`, named at its foot."""
    ax.axvline(compute, color="grey", linestyle=style, linewidth=1)
    ax.annotate(text, (compute, 0), xycoords=("data", "axes fraction"), xytext=(-2, 3), textcoords="offset points",
                rotation=90, ha="right", va="bottom", fontsize="x-small", color="dimgrey")


def loss_vs_compute(study: Study) -> Figure:
    p = study.points
    figure = Figure(figsize=(7.5, 5), layout="constrained")
    ax = figure.add_subplot()
    norm = LogNorm(p.n.min(), p.n.max() if p.n.max() > p.n.min() else p.n.min() * 10)
    cmap = colormaps["viridis"]
    for group in p.size_groups():
        order = group[np.argsort(p.c[group])]
        if len(order) > 1:
            ax.plot(p.c[order], p.loss[order], color=cmap(norm(np.mean(p.n[group]))), linewidth=0.8, alpha=0.6)
    dots = ax.scatter(p.c, p.loss, c=p.n, cmap=cmap, norm=norm, s=14, zorder=3)
    bar = figure.colorbar(dots, ax=ax, label=f"{PARAMS_LABEL} (model size)")
    bar.ax.yaxis.set_major_formatter(LogFormatterSciNotation())
    bar.ax.yaxis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    if study.envelope is not None:
        e = study.envelope
        edge = e.frontier
        ax.plot(p.c[edge], p.loss[edge], "k-", linewidth=1.5, zorder=4,
                label=f"frontier ({len(edge)} points): N_opt = {e.n_opt}{_interval_text(study, 'approach1.a')}, "
                      f"D_opt = {e.d_opt}")
        ax.legend(fontsize="small")
    ax.set(xscale="log", xlabel=COMPUTE_LABEL, ylabel=loss_label(study),
           title="Approach 1: final loss vs compute per model size, and its lower envelope")
    return figure


def isoflop(study: Study, predictions: Sequence[Prediction] = ()) -> Optional[Figure]:
    iso = study.isoflop
    if iso is None:
        return None
    figure = Figure(figsize=(16, 5), layout="constrained")
    left, middle, right = figure.subplots(1, 3)
    cmap = colormaps["plasma"]
    computes = np.array([level.compute for level in iso.levels])
    norm = LogNorm(computes.min(), computes.max() if computes.max() > computes.min() else computes.min() * 10)
    for level in iso.levels:
        color = cmap(norm(level.compute) * 0.85)
        left.scatter(level.n, level.loss, color=color, s=12)
        x = np.linspace(np.log(level.n.min()), np.log(level.n.max()), 100)
        left.plot(np.exp(x), np.polyval(level.parabola, x), color=color, linewidth=1, label=f"{level.compute:.3g}")
        left.plot(level.n_opt, level.loss_opt, marker="*", color=color, markersize=11, markeredgecolor="k")
    how = "shared" if iso.mode == "levels" else "interpolated"
    left.set(xscale="log", xlabel=PARAMS_LABEL, ylabel=loss_label(study),
             title=f"Approach 2: IsoFLOP parabolas ({len(iso.levels)} {how} levels), minima starred")
    left.legend(title="budget C (FLOPs)", fontsize="x-small", title_fontsize="small", ncols=2)
    grid = _compute_grid(study, predictions)
    n_curve, d_curve, n_text, d_text = _optimal_curves(study, "approach2", grid)
    bands = _bands(study, "approach2", grid)
    for ax, minima, curve, text, key, band, label in (
            (middle, [lv.n_opt for lv in iso.levels], n_curve, n_text, "a", 0, PARAMS_LABEL),
            (right, [lv.d_opt for lv in iso.levels], d_curve, d_text, "b", 1, TOKENS_LABEL)):
        ax.scatter(computes, minima, color=cmap(norm(computes) * 0.85), s=40, marker="*", edgecolors="k",
                   zorder=4, label="parabola minima")
        ax.plot(grid, curve, "k-", linewidth=1.2, label=f"{text}{_interval_text(study, f'approach2.{key}')}")
        if bands is not None:
            ax.fill_between(grid, *bands[band], color="grey", alpha=0.25, linewidth=0,
                            label=f"{100 * study.options.confidence:g}% bootstrap interval")
        ax.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel=f"compute-optimal {label}",
               title=f"Approach 2: compute-optimal {label.split()[-1]}")
    _mark_predictions((middle, right), predictions, ("approach2",))
    middle.legend(fontsize="small", loc="upper left")
    right.legend(fontsize="small", loc="upper left")
    return figure


def compute_optimal(study: Study, predictions: Sequence[Prediction] = ()) -> Figure:
    p = study.points
    grid = _compute_grid(study, predictions)
    figure = Figure(figsize=(13, 5.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    for approach in study.fitted:
        color = COLORS[approach]
        n_curve, d_curve, n_text, d_text = _optimal_curves(study, approach, grid)
        left.plot(grid, n_curve, color=color, label=f"{approach_name(approach)}: {n_text}"
                                                    f"{_interval_text(study, f'{approach}.a')}")
        right.plot(grid, d_curve, color=color, label=f"{approach_name(approach)}: {d_text}"
                                                     f"{_interval_text(study, f'{approach}.b')}")
        bands = _bands(study, approach, grid)
        if bands is not None:
            left.fill_between(grid, *bands[0], color=color, alpha=0.2, linewidth=0)
            right.fill_between(grid, *bands[1], color=color, alpha=0.2, linewidth=0)
    if study.envelope is not None:
        edge = study.envelope.frontier
        left.scatter(p.c[edge], p.n[edge], s=12, color=COLORS["approach1"], alpha=0.7, label="frontier points")
        right.scatter(p.c[edge], p.d[edge], s=12, color=COLORS["approach1"], alpha=0.7, label="frontier points")
    if study.isoflop is not None:
        levels = study.isoflop.levels
        computes = [lv.compute for lv in levels]
        left.scatter(computes, [lv.n_opt for lv in levels], s=30, marker="D", color=COLORS["approach2"],
                     edgecolors="k", label="IsoFLOP minima")
        right.scatter(computes, [lv.d_opt for lv in levels], s=30, marker="D", color=COLORS["approach2"],
                      edgecolors="k", label="IsoFLOP minima")
    _mark_predictions((left, right), predictions, study.fitted)
    for ax in (left, right):
        _vertical(ax, p.c.max(), "largest fitted compute", "--")
    band = (f"; bands: {100 * study.options.confidence:g}% bootstrap intervals" if study.samples is not None else "")
    best = ("" if study.support is None or study.support.best is None
            else f"; the points support {approach_name(study.support.best)} best")
    left.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel=f"compute-optimal {PARAMS_LABEL}",
             title=f"N_opt(C){band}")
    right.set(xscale="log", yscale="log", xlabel=COMPUTE_LABEL, ylabel=f"compute-optimal {TOKENS_LABEL}",
              title=f"D_opt(C){best}")
    left.legend(fontsize="small", loc="upper left")
    right.legend(fontsize="small", loc="upper left")
    return figure


def parametric(study: Study, held: Optional[Holdout] = None) -> Optional[Figure]:
    """Approach 3's law against the observed losses; where it did not fit all points but did fit without the
    held-out ones, that law, on the points it saw and on those it did not."""
    p = study.points
    if study.law is not None:
        law, seen, heading = study.law.law, p, "Approach 3"
    elif held is not None and held.law is not None:
        law, heading = held.law, f"Approach 3 (not fitted on all points), fitted without\n{held.rule}"
        seen = p.take(np.flatnonzero([name not in set(held.names) for name in p.names]))
    else:
        return None
    figure = Figure(figsize=(7, 7), layout="constrained")
    ax = figure.add_subplot()
    fitted = law.loss(seen.n, seen.d)
    ax.scatter(seen.loss, fitted, s=12, label="fitted points")
    low, high = min(seen.loss.min(), fitted.min()), max(seen.loss.max(), fitted.max())
    if held is not None and held.law is not None:
        ax.scatter(held.observed, held.predicted, s=40, marker="x", color="C3",
                   label=f"held out ({held.rule}), law fitted without them")
        low, high = min(low, held.observed.min(), held.predicted.min()), max(high, held.observed.max(),
                                                                             held.predicted.max())
    ax.plot([low, high], [low, high], "k--", linewidth=1, label="fitted = observed")
    ax.set(xlabel=f"observed {loss_label(study)}", ylabel=f"L(N, D) {loss_unit(study)}")
    ax.set_title(f"{heading}: L(N, D) = E + A/N^alpha + B/D^beta\nE {law.E:.3g}, A {law.A:.4g}, "
                 f"alpha {law.alpha:.3f}, B {law.B:.4g}, beta {law.beta:.3f}", fontsize="medium")
    ax.legend(loc="lower right", fontsize="small")
    return figure


def parametric_contours(study: Study, predictions: Sequence[Prediction] = ()) -> Optional[Figure]:
    """Hoffmann et al.'s Figure 4 (left): L(N, D = C/6N) as iso-loss contours over (C, N), the points, and
    the efficient frontier N_opt(C) through each contour's minimum."""
    if study.law is None:
        return None
    p, law = study.points, study.law.law
    grid = _compute_grid(study, predictions, 200)
    frontier = law.n_opt(grid)
    low = min(p.n.min(), frontier.min()) / 3
    high = max(p.n.max(), frontier.max()) * 3
    sizes = np.geomspace(low, high, 200)
    c, n = np.meshgrid(grid, sizes)
    loss = law.loss(n, c / (6.0 * n))
    figure = Figure(figsize=(8.5, 6), layout="constrained")
    ax = figure.add_subplot()
    # the highest tenth (tiny models on huge data, or huge models on a few tokens) would take the scale
    levels = MaxNLocator(nbins=24).tick_values(loss.min(), np.quantile(loss, 0.9))
    filled = ax.contourf(c, n, loss, levels=levels, cmap=colormaps["viridis_r"], extend="max")
    lines = ax.contour(c, n, loss, levels=levels[::2], colors="white", linewidths=0.6)
    ax.clabel(lines, fmt="%.3g", fontsize="x-small")
    figure.colorbar(filled, ax=ax, label=f"L(N, D = C / 6N), {loss_label(study)}")
    ax.plot(grid, frontier, color="C3", linewidth=2,
            label=f"efficient frontier: N_opt = {law.G:.3g} (C/6)^{law.a:.3f}{_interval_text(study, 'approach3.a')}")
    ax.scatter(6.0 * p.n * p.d, p.n, s=10, color="k", label="fitted points (C = 6ND)")
    for prediction in predictions:
        for a in prediction.allocations:
            if a.approach == "approach3":
                ax.plot(a.compute, a.n, marker="*", markersize=15, color="C3", markeredgecolor="k",
                        label=f"prediction: N {a.n:.3g}, D {a.d:.3g} at C {a.compute:.3g}")
    ax.set(xscale="log", yscale="log", xlabel=f"{COMPUTE_LABEL}, 6ND", ylabel=PARAMS_LABEL,
           title=f"Approach 3: iso-loss contours (E {law.E:.3g}, A {law.A:.4g}, alpha {law.alpha:.3f}, B {law.B:.4g}, "
                 f"beta {law.beta:.3f})")
    ax.legend(fontsize="small", loc="upper left")
    return figure


def figures(study: Study, held: Optional[Holdout] = None,
            predictions: Sequence[Prediction] = ()) -> dict[str, Figure]:
    """Every figure the study supports, by file name."""
    built = {"loss_vs_compute.png": loss_vs_compute(study), "isoflop.png": isoflop(study, predictions),
             "compute_optimal.png": compute_optimal(study, predictions), "parametric.png": parametric(study, held),
             "parametric_contours.png": parametric_contours(study, predictions)}
    return {name: figure for name, figure in built.items() if figure is not None}


def draw_all(study: Study, folder: Path, held: Optional[Holdout] = None,
             predictions: Sequence[Prediction] = ()) -> list[Path]:
    """Every figure the study supports, written into `folder`."""
    return [_save(figure, folder / name) for name, figure in figures(study, held, predictions).items()]
