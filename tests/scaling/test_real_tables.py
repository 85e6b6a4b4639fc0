"""tools/scaling_law.py on published IsoFLOP tables as the field hands them over (tests/fixtures/isoflops):
the Llama 3 points held twice (a loss and its exp), a `budget` column that 6ND strays from (Marin's
ladders), every approach's prediction at Llama 3 405B's 3.8e25 FLOPs; and Epoch's Chinchilla points,
whose near-duplicates are separate runs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from pytest import approx

from megallm.cli.scaling_law import main
from megallm.scaling.fit import isoflop
from megallm.scaling.points import read_csv
from tests.helpers import assert_one_line_error, run_main
from tests.scaling.inputs import CHINCHILLA_CSV, ISOFLOPS, LLAMA3, kept_rows, write_rows

MARIN = ISOFLOPS / "marin_202603.csv"
LLAMA3_BUDGETS = (6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21, 1e22)  # the paper's Figure 2
MARIN_BUDGETS = (3e18, 9e18, 1.8e19, 3e19, 9e19, 1.8e20, 3e20)


def subset(source: Path, folder: Path, keep: dict[str, str], columns: tuple[str, ...] = ()) -> Path:
    """The rows of `source` whose columns hold `keep`'s values, with only `columns` (all when empty)."""
    rows = kept_rows(source, lambda r: all(r[k] == v for k, v in keep.items()))
    return write_rows(folder / f"{source.stem}_{'_'.join(keep.values())}.csv", columns or tuple(rows[0]), rows)


@pytest.mark.parametrize("extra", [["--predict-compute", "3.8e25"], [], ["--bootstrap", "0"]],
                         ids=["predict", "plain", "no-bootstrap"])
def test_the_llama_3_table_holding_each_point_as_raw_and_exp_loss_is_refused_in_one_line(capsys, extra):
    """The tester's three commands: a ZeroDivisionError, an OverflowError and a degenerate law (A 1, B 1,
    alpha 0) printed as a result, before."""
    result = run_main(main, [LLAMA3, "--starts", "4", *extra], capsys)
    assert_one_line_error(result, f"{LLAMA3}:2 and {LLAMA3}:135 hold the same run (N 6.33111e+08, D 1.5795e+09)",
                          "losses 0.919843, 2.5089", "'condition' ('raw_loss' vs 'exp_loss')",
                          "133 (N, D) pairs are held by 266 rows", "--where condition=raw_loss", "--duplicates mean",
                          prefix="scaling_law: error: ")
    assert result.stdout == ""


def test_duplicated_rows_are_refused_or_averaged_and_near_duplicates_are_runs(tmp_path, capsys):
    """Epoch's Chinchilla CSV holds runs of one size within 0.01% of each other's compute (rows 65 and 90:
    the same loss): separate points, as Epoch fits them. The same table with every row twice narrowed
    the bootstrap intervals silently before; now it is refused, and `--duplicates mean` gives back the
    table's own 245 points."""
    points = read_csv(CHINCHILLA_CSV)
    assert len(points) == 245 and points.same_runs() == []
    assert points.c[points.names.index("svg_extracted_data.csv:65")] / points.c[
        points.names.index("svg_extracted_data.csv:90")] == approx(1, abs=1e-4)
    lines = CHINCHILLA_CSV.read_text().splitlines(keepends=True)
    doubled = tmp_path / "doubled.csv"
    doubled.write_text("".join([lines[0], *lines[1:], *lines[1:]]))
    result = run_main(main, [doubled, "--bootstrap", "0", "--starts", "4"], capsys)
    assert_one_line_error(result, f"{doubled}:2 and {doubled}:247 hold the same run",
                          "245 (N, D) pairs are held by 490 rows",
                          "keep one of each run's rows, or pass --duplicates mean", prefix="scaling_law: error: ")
    merged = read_csv(doubled, duplicates="mean", note=lambda line: None)
    np.testing.assert_array_equal(merged.n, points.n)
    np.testing.assert_array_equal(merged.loss, points.loss)
    np.testing.assert_allclose(merged.c, points.c, rtol=1e-15)


def test_a_budget_column_is_the_compute_level(tmp_path):
    """Marin's comma ladder: 6ND/budget spans 0.93-1.35, so 6ND regroups its points (approach 2 found 7
    levels at 3.6e18 .. 2.9e20 and a = 0.370, before); grouped by the budget, a = 0.405."""
    table = subset(MARIN, tmp_path, {"dataset": "comma"}, ("params", "tokens", "budget", "loss"))
    points = read_csv(table)
    ratio = 6 * points.n * points.d / points.c
    assert points.compute_column == "budget" and ratio.min() < 0.94 and ratio.max() > 1.34
    fit = isoflop(points)
    assert fit.mode == "levels"
    assert [level.compute for level in fit.levels] == list(MARIN_BUDGETS)
    assert sum(len(level.members) for level in fit.levels) == len(points) == 85
    assert fit.n_opt.exponent == approx(0.405, abs=0.001)


def test_where_keeps_one_experiment_of_a_table(capsys):
    """The whole Marin table holds three corpora over the same runs: refused, pointing at --where."""
    result = run_main(main, [MARIN, "--bootstrap", "0", "--starts", "4"], capsys)
    assert_one_line_error(result, "'dataset' ('comma' vs 'dclm')", "--where dataset=comma",
                          prefix="scaling_law: error: ")
    result = run_main(main, [MARIN, "--where", "dataset=comma", "--bootstrap", "0", "--starts", "4"], capsys)
    assert result.returncode == 0, result.stderr
    assert "85 points from" in result.stdout and "C from column 'budget'" in result.stdout
    assert "approach 2: IsoFLOP parabolas on 7 shared compute levels (3e+18 .. 3e+20 FLOPs)" in result.stdout
    result = run_main(main, [MARIN, "--where", "dataset=c4"], capsys)
    assert_one_line_error(result, "--where 'dataset=c4' keeps none of the 258 rows", "'comma', 'dclm', 'nemotron'",
                          prefix="scaling_law: error: ")


def test_every_approach_predicts_the_llama_3_405b_budget_side_by_side(tmp_path, capsys):
    """At 3.8e25 FLOPs approach 2 (the paper's method) gives 393B parameters (the paper: 402B), approach 3
    894B: both are shown with their intervals, with the approach the held-out levels support best; only
    approach 3's was shown before. No warning reaches the console."""
    out = tmp_path / "fit"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_main(main, [LLAMA3, "--where", "condition=raw_loss", "--predict-compute", "3.8e25",
                                 "--bootstrap", "20", "--starts", "8", "--output", out], capsys)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and [str(w.message) for w in caught] == []
    numbers = json.loads((out / "fit.json").read_text())
    assert [level["C"] for level in numbers["approach2"]["levels"]] == list(LLAMA3_BUDGETS)
    (prediction,) = numbers["predictions"]
    by = prediction["approaches"]
    assert sorted(by) == ["approach1", "approach2", "approach3"]
    assert by["approach2"]["n"] == approx(3.93e11, rel=0.01) and by["approach3"]["n"] == approx(8.94e11, rel=0.01)
    assert by["approach1"]["n"] == approx(4.17e11, rel=0.01)
    for approach, allocation in by.items():
        assert allocation["compute"] == approx(3.8e25)
        for key in ("n", "d"):
            low, high = allocation["intervals"][key]
            assert low < allocation[key] < high, (approach, key)
    assert by["approach3"]["intervals"]["loss"][0] < by["approach3"]["loss"] and by["approach1"]["loss"] is None
    support = numbers["support"]
    assert prediction["best"] == support["best"] in by
    assert [f["C"] for f in support["forecasts"]] == [1e22, 3e21, 1e21]
    best_error = support["mean_abs_log_error"][support["best"]]
    assert best_error == min(support["mean_abs_log_error"].values())
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"which approach the points support: approach {support['best'][-1]} best")
               for line in lines), result.stdout
    rows = [line for line in lines if line.startswith("  approach ")]
    assert len(rows) == 3 and [r.split()[1] for r in rows] == ["1", "2", "3"]
    assert "<- best supported" in rows[int(support["best"][-1]) - 1]
    assert "3.93e+11  [" in rows[1] and "8.94e+11  [" in rows[2]
