"""Approaches 1 and 2: the loss frontier, IsoFLOP parabolas on shared and on interpolated compute levels."""

from __future__ import annotations

import numpy as np
import pytest
from pytest import approx

from megallm.scaling.fit import NotFitted, envelope, frontier, group_levels, isoflop
from megallm.scaling.points import Points
from tests.scaling.inputs import HOFFMANN_LAW, synthetic

CHINCHILLA_BUDGETS = (6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21)  # Hoffmann et al., Figure 3


def test_frontier_keeps_the_points_no_cheaper_point_beats():
    c = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 5.0])
    loss = np.array([3.0, 3.2, 2.5, 2.6, 2.4, 2.2])
    points = Points(tuple("abcdef"), np.ones(6), np.ones(6), c, loss, "runs")
    assert [points.names[i] for i in frontier(points)] == ["a", "c", "f"]


def test_approach_1_on_the_chinchilla_csv(chinchilla):
    fit = envelope(chinchilla)
    # measured: 68 frontier points, a 0.507, b 0.493 (Hoffmann et al.'s approach 1, on whole curves: 0.50)
    assert len(fit.frontier) == 68
    assert fit.n_opt.exponent == approx(0.507, abs=0.005)
    assert fit.n_opt.exponent + fit.d_opt.exponent == approx(1.0)  # D = C / 6N in the CSV


def test_approach_2_finds_the_chinchilla_budgets(chinchilla):
    fit = isoflop(chinchilla)
    assert fit.mode == "levels"
    computes = np.array([level.compute for level in fit.levels])
    for budget in CHINCHILLA_BUDGETS:  # read off a figure: each level sits up to 10% below its budget
        assert np.min(np.abs(np.log(computes / budget))) < np.log(1.15), budget
    # measured: 12 levels, a 0.494 (Hoffmann et al.'s approach 2: 0.49)
    assert fit.n_opt.exponent == approx(0.49, abs=0.01)
    assert all(level.n.min() <= level.n_opt <= level.n.max() for level in fit.levels)


def test_levels_group_points_within_their_half_width():
    c = np.array([1e19, 1.05e19, 0.97e19, 1e20, 1.08e20, 0.95e20, 3e19])
    points = Points(tuple("abcdefg"), np.array([1, 2, 3, 1, 2, 3, 1.0]) * 1e8, np.ones(7), c, np.ones(7), "runs")
    groups = sorted(sorted(points.names[i] for i in g) for g in group_levels(points))
    assert groups == [["a", "b", "c"], ["d", "e", "f"]]


def isoflop_sweep(budgets, per_budget: int = 7) -> Points:
    """An IsoFLOP sweep of the Hoffmann law: at each budget, sizes from 1/4 to 4x its optimum."""
    n = np.concatenate([HOFFMANN_LAW.n_opt(c) * np.geomspace(0.25, 4, per_budget) for c in budgets])
    c = np.repeat(budgets, per_budget)
    return synthetic(HOFFMANN_LAW, n, c / (6 * n))


def test_approach_2_on_an_isoflop_sweep_uses_its_levels():
    fit = isoflop(isoflop_sweep(np.geomspace(1e18, 1e21, 7)))
    assert fit.mode == "levels" and len(fit.levels) == 7
    # the IsoFLOP curve is not exactly a parabola in ln N, so the vertex is off by a little
    assert fit.n_opt.exponent == approx(HOFFMANN_LAW.a, abs=0.01)


def test_approach_2_interpolates_a_sweep_of_sizes_and_token_budgets():
    """7 sizes x 7 token budgets (steps of 10^(1/3) and 10^(1/2)): every run its own compute."""
    n, d = np.meshgrid(np.geomspace(1e7, 1e9, 7), np.geomspace(2e8, 2e11, 7))
    points = synthetic(HOFFMANN_LAW, n.ravel(), d.ravel())
    fit = isoflop(points)
    assert fit.mode == "interpolate"
    assert all(level.members is None and len(level.n) >= 3 for level in fit.levels)
    # measured: 15 levels, a 0.445 against the law's 0.4516 (interpolation in log-log between budgets)
    assert len(fit.levels) >= 10
    assert fit.n_opt.exponent == approx(HOFFMANN_LAW.a, abs=0.02)
    # forced onto shared levels, the same points give too few of them
    with pytest.raises(NotFitted, match="usable compute level"):
        isoflop(points.take(np.arange(0, len(points), 3)), "levels")


def test_a_frontier_of_one_point_is_not_fitted():
    points = Points(tuple("ab"), np.ones(2), np.ones(2), np.array([1.0, 2.0]), np.array([2.0, 3.0]), "runs")
    with pytest.raises(NotFitted, match="frontier holds 1 point"):
        envelope(points)
