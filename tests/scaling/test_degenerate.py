"""Fits that only look like fits: a power law through one compute level, a parametric law whose
optimiser never moved, ran to its bounds or to E = 0, and bootstrap intervals of zero width; and
numpy's warnings, which stay off the console."""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from pytest import approx

from megallm.cli.scaling_law import main
from megallm.scaling import parametric
from megallm.scaling.fit import NotFitted, PowerLaw, envelope
from megallm.scaling.parametric import fit_law
from megallm.scaling.points import Points, read_csv
from tests.helpers import REPO, run_main
from tests.scaling.inputs import LLAMA3, kept_rows, write_rows

LADDER = REPO / "docs" / "scaling" / "ladder_points.csv"


def llama3_rows(folder: Path, budgets=None, condition: str = "raw_loss", budget_column: bool = False) -> Path:
    """Llama 3's points as params, tokens, loss (C = 6ND), the budget column only when asked."""
    columns = ["params", "tokens", "loss"] + ["budget"] * budget_column
    rows = kept_rows(LLAMA3, lambda r: (condition is None or r["condition"] == condition)
                     and (budgets is None or float(r["budget"]) in budgets))
    return write_rows(folder / f"llama3_{len(rows)}_{int(budget_column)}.csv", columns, rows)


def test_approach_1_needs_two_compute_levels_not_two_roundings_of_6nd(tmp_path):
    """Llama 3's N is budget / 6D, so 6ND gives back each budget up to its last bits: one budget's 16
    points 'fitted' a power law before (with RankWarning), and all ten budgets put 17 points on the frontier."""
    one = read_csv(llama3_rows(tmp_path, budgets={6e18}))
    assert len(np.unique(one.c)) > 1 and np.ptp(np.log(one.c)) < 1e-14  # float noise, one compute
    with pytest.raises(NotFitted, match=r"the loss frontier holds 1 point\(s\)"):
        envelope(one)
    with pytest.raises(NotFitted, match="two compute levels or more; these 16 are at 1"):
        PowerLaw.fit(one.c, one.n)
    every = read_csv(llama3_rows(tmp_path))
    given = read_csv(llama3_rows(tmp_path, budget_column=True))
    fit, reference = envelope(every), envelope(given)
    assert len(fit.frontier) == len(reference.frontier) == 10
    assert fit.n_opt.exponent == approx(reference.n_opt.exponent, rel=1e-9)


def test_no_warning_reaches_the_console(tmp_path, capsys):
    """Llama 3's smallest budget alone, without its budget column, 20 resamples: approach 1 'fitted' two
    frontier points of one compute, and numpy's RankWarning reached the console 42 times."""
    table = llama3_rows(tmp_path, budgets={6e18})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_main(main, [table, "--bootstrap", "20", "--starts", "4"], capsys)
    assert result.returncode == 0 and result.stderr == ""
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert "approach 1: not fitted: the loss frontier holds 1 point(s); a power law needs 2 or more" in result.stdout


def test_a_law_whose_optimiser_never_moved_is_not_printed():
    """Each Llama 3 point with its raw and its exp loss (read past the duplicate check): the summed Huber
    gradient is 0 at every grid start of alpha 0, and L-BFGS-B returned its start, A 1, B 1, alpha 0."""
    with open(LLAMA3, newline="") as f:
        rows = list(csv.DictReader(f))
    n, d, loss = (np.array([float(r[k]) for r in rows]) for k in ("params", "tokens", "loss"))
    with pytest.raises(NotFitted, match="converged from none of its 32 starts"):
        fit_law(n, d, loss)


def test_a_small_ladder_law_on_its_bound_is_refused(tmp_path, capsys):
    """The README's ladder less its 75-step runs (4 sizes x 2 budgets): approach 3 ran to alpha 17,
    A 1.4e104, with an interval [17.03, 17.05] from refits that started at that optimum."""
    lines = LADDER.read_text().splitlines(keepends=True)
    table = tmp_path / "ladder8.csv"
    table.write_text("".join([lines[0], *(line for line in lines[1:] if "steps=75\"" not in line)]))
    result = run_main(main, [table, "--bootstrap", "20", "--starts", "8"], capsys)
    assert result.returncode == 0, result.stderr
    assert "8 points from" in result.stdout
    bound = parametric.MAX_EXPONENT
    assert f"approach 3: not fitted: alpha ran to its bound {bound:g} (the box is [0, {bound:g}])" \
        in result.stdout.splitlines()
    assert "approach 1: lower envelope of loss vs compute (5 frontier points)" in result.stdout
    assert "alpha  " not in result.stdout


def test_the_ladder_law_with_e_at_zero_is_refused_and_the_holdout_still_fits(capsys):
    """All 12 ladder runs: E ran to 7e-18 with the interval [6.999e-18, 6.999e-18] (every refit started
    where the gradient in E is 0), printed with a note. Now approach 3 is not fitted; without the largest
    rung it is (E 0.47), and predicts that rung within 2%."""
    result = run_main(main, [LADDER, "--bootstrap", "10", "--starts", "8", "--holdout-largest"], capsys)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("approach 3:")]
    assert line.startswith("approach 3: not fitted: E ran to its floor 4.24e-06 (1e-06 of the smallest loss): these "
                           "points do not pin the irreducible loss (they are at 0.034-0.83 tokens per parameter")
    assert "e-18" not in result.stdout
    assert "holdout: approach 3 fitted without the largest model size" in result.stdout
    assert "E 0.4732" in result.stdout and "mean |error| 1.36%" in result.stdout


def test_bootstrap_intervals_are_withheld_where_resamples_give_no_law(tmp_path, capsys):
    """Three ladder rungs (9 runs): the full-data law is interior (E 0.47), but half the resamples run to
    a bound when refitted from the grid; before, refits from the full-data optimum printed intervals."""
    lines = LADDER.read_text().splitlines(keepends=True)
    table = tmp_path / "ladder9.csv"
    table.write_text("".join(lines[:10]))
    result = run_main(main, [table, "--bootstrap", "20", "--starts", "8"], capsys)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # about half: which resamples' optima land on a bound depends on the last bits (the CPU's vector width)
    fitted = int(re.search(r"refitted: approach 1 20 of 20, approach 3 (\d+) of 20", out).group(1))
    assert 2 <= fitted <= 18, out
    assert f"  intervals withheld: {20 - fitted} of 20 resamples gave no fit, more than a 95% interval may leave out" \
        in out
    alpha = next(line for line in out.splitlines() if line.strip().startswith("alpha"))
    assert "[" not in alpha


def test_noise_free_points_of_a_law_without_e_say_so():
    """Noise-free points of a law with E = 0 (alpha 0.3, beta 0.3): E runs to its floor and the law is
    refused, with the reason (before: returned, E 1e-20 or so)."""
    sizes, tokens = np.meshgrid(np.geomspace(1e7, 1e9, 5), np.geomspace(1e8, 1e11, 5))
    n, d = sizes.ravel(), tokens.ravel()
    loss = 400.0 / n ** 0.3 + 400.0 / d ** 0.3
    points = Points(tuple(map(str, range(len(n)))), n, d, 6 * n * d, loss, "runs")
    with pytest.raises(NotFitted, match="E ran to its floor"):
        fit_law(points.n, points.d, points.loss, keep_best=8)
