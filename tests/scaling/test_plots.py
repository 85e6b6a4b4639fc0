"""The figures as a researcher reads them (Hoffmann et al.'s Figures 3 and 4, Epoch AI's replication), on
the Llama 3 IsoFLOP points with a prediction at 3.8e25 FLOPs: each parabola's budget named, N_opt(C)
beside D_opt(C), coefficients in the legends, bootstrap bands, the prediction target marked, approach 3
as iso-loss contours with its efficient frontier, units on the axes."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.collections import PolyCollection
from matplotlib.contour import ContourSet
from matplotlib.image import imread

from megallm.scaling import plots
from megallm.scaling.points import read_csv
from megallm.scaling.predict import predict
from megallm.scaling.study import Options, analyse

LLAMA3 = Path(__file__).resolve().parents[1] / "fixtures" / "isoflops" / "llama_3.csv"
TARGET = 3.8e25


@pytest.fixture(scope="module")
def drawn():
    points = read_csv(LLAMA3, where=["condition=raw_loss"])
    study = analyse(points, Options(bootstrap=20, keep_best=8))
    prediction = predict(study, "compute", TARGET)
    return study, prediction, plots.figures(study, None, [prediction])


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [text.get_text() for text in legend.get_texts()] if legend else []


def bands(ax) -> list:
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def marks_at(ax, x: float) -> bool:
    """A data marker (not a whole-axes line) at compute x, within the side-by-side shift."""
    return any(len(line.get_xdata()) == 1 and abs(line.get_xdata()[0] / x - 1) < 0.15 and line.get_marker() == "*"
               for line in ax.get_lines())


def test_isoflop_figure_names_each_budget_and_draws_n_and_d_with_bands(drawn):
    _, _, built = drawn
    left, middle, right = built["isoflop.png"].axes
    assert left.get_legend().get_title().get_text() == "budget C (FLOPs)"
    assert legend_texts(left) == ["6e+18", "1e+19", "3e+19", "6e+19", "1e+20", "3e+20", "6e+20", "1e+21", "3e+21",
                                  "1e+22"]
    assert (left.get_xlabel(), middle.get_xlabel(), right.get_xlabel()) == (
        "parameters N", "training compute C (FLOPs)", "training compute C (FLOPs)")
    assert middle.get_ylabel() == "compute-optimal parameters N"
    assert right.get_ylabel() == "compute-optimal training tokens D"
    assert any(t.startswith("N_opt = 0.557 C^0.463 [") for t in legend_texts(middle)), legend_texts(middle)
    assert any(t.startswith("D_opt = 0.299 C^0.537 [") for t in legend_texts(right)), legend_texts(right)
    for ax in (middle, right):
        assert len(bands(ax)) == 1 and "95% bootstrap interval" in legend_texts(ax)
        assert marks_at(ax, TARGET)
        assert ax.get_xlim()[1] > TARGET


def test_compute_optimal_figure_holds_every_approach_and_the_target(drawn):
    study, prediction, built = drawn
    left, right = built["compute_optimal.png"].axes
    assert left.get_ylabel() == "compute-optimal parameters N"
    assert right.get_ylabel() == "compute-optimal training tokens D"
    texts = legend_texts(left)
    for approach, law in (("approach 1", "N_opt = 0.446 C^0.468 ["), ("approach 2", "N_opt = 0.557 C^0.463 ["),
                          ("approach 3", "N_opt = 0.0768 (C/6)^0.527 [")):
        assert any(t.startswith(f"{approach}: {law}") for t in texts), texts
    for ax in (left, right):
        assert len(bands(ax)) == 3
        assert marks_at(ax, TARGET)
        assert "target: 3.8e+25 FLOPs" in [t.get_text() for t in ax.texts]
    assert right.get_title().endswith(f"the points support approach {study.support.best[-1]} best")


def test_approach_3_is_drawn_as_iso_loss_contours_with_the_efficient_frontier(drawn):
    _, _, built = drawn
    ax = built["parametric_contours.png"].axes[0]
    assert any(isinstance(c, ContourSet) for c in ax.collections)
    assert any(t.startswith("efficient frontier: N_opt = 0.0768 (C/6)^0.527 [") for t in legend_texts(ax))
    assert ax.get_xlabel() == "training compute C (FLOPs), 6ND" and ax.get_ylabel() == "parameters N"
    assert marks_at(ax, TARGET)
    colorbar = built["parametric_contours.png"].axes[1]
    assert colorbar.get_ylabel().startswith("L(N, D = C / 6N), final loss")


def test_loss_vs_compute_names_its_colours_and_the_files_are_pngs(drawn, tmp_path):
    study, prediction, built = drawn
    ax, colorbar = built["loss_vs_compute.png"].axes
    assert colorbar.get_ylabel() == "parameters N (model size)"
    assert ax.get_xlabel() == "training compute C (FLOPs)" and ax.get_ylabel() == "final loss (the table's units)"
    assert legend_texts(ax)[0].startswith("frontier (10 points): N_opt = 0.446 C^0.468 [")
    written = plots.draw_all(study, tmp_path, None, [prediction])
    assert sorted(p.name for p in written) == sorted(built)
    for path in written:
        image = imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) > 300, path.name
