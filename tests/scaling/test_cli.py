"""tools/scaling_law.py end to end on the Chinchilla CSV: the table, fit.json, the plots, predictions, holdout."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from matplotlib.image import imread
from pytest import approx

from megallm.cli.scaling_law import main
from megallm.scaling.predict import nearest_preset
from tests.helpers import REPO, RunResult, run_main
from tests.scaling.inputs import CHINCHILLA_CSV

PLOTS = ("loss_vs_compute.png", "isoflop.png", "compute_optimal.png", "parametric.png", "parametric_contours.png")
# 8 L-BFGS-B starts (the default 32 is tested in test_parametric.py; the best one alone reaches the optimum)
ARGS = [CHINCHILLA_CSV, "--drop-highest", "5", "--bootstrap", "20", "--seed", "1", "--starts", "8",
        "--predict-compute", "1e21", "--predict-params", "1.2e9", "--holdout-largest"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One run of the command line with --output (20 resamples keep it to seconds): result and folder."""
    out = tmp_path_factory.mktemp("fit")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in [*ARGS, "--output", out]])
    return RunResult(code, stdout.getvalue(), stderr.getvalue()), out


def test_the_table_has_every_approach_and_the_prediction(fitted):
    result, _ = fitted
    assert result.returncode == 0 and result.stderr == ""
    out = result.stdout
    assert "240 points from" in out and "5 highest losses left out" in out
    assert "approach 1: lower envelope of loss vs compute (68 frontier points)" in out
    assert "approach 2: IsoFLOP parabolas on 12 shared compute levels" in out
    assert "L-BFGS-B from 8 of 4500 starts" in out
    assert "prediction for 1e+21 FLOPs" in out and "prediction for 1.2e+09 parameters" in out
    # 1e21 FLOPs: N_opt 2.79e9; nearest preset (today 3b: 3.21e9 parameters, its own 128256-token vocabulary)
    preset = nearest_preset(2.79e9, None)
    assert f"nearest preset: +model={preset.name} ({preset.params:.3g} parameters, vocabulary {preset.vocab_size}" \
        in out
    assert "holdout: approach 3 fitted without the largest model size" in out
    assert "wrote" in out.splitlines()[-1]


def test_fit_json_holds_the_numbers(fitted):
    _, out = fitted
    numbers = json.loads((out / "fit.json").read_text())
    law = numbers["approach3"]
    assert (law["A"], law["B"], law["E"], law["alpha"], law["beta"]) == (
        approx(477.8, rel=0.05), approx(2143, rel=0.05), approx(1.817, rel=0.01), approx(0.347, rel=0.01),
        approx(0.367, rel=0.01))
    assert numbers["approach2"]["mode"] == "levels" and numbers["approach2"]["a"] == approx(0.49, abs=0.01)
    assert numbers["approach1"]["a"] == approx(0.507, abs=0.005)
    assert len(numbers["points"]) == 240 and len(numbers["dropped"]) == 5
    low, high = numbers["intervals"]["approach3.alpha"]
    assert low < law["alpha"] < high
    compute, params = numbers["predictions"]
    law3 = compute["approaches"]["approach3"]
    assert compute["given"] == "compute" and law3["n"] * law3["d"] * 6 == approx(1e21)
    assert law3["n"] == approx(2.79e9, rel=0.01) and law3["intervals"]["loss"][0] < law3["loss"]
    chosen = compute["approaches"][compute["preset"]["for"]]
    assert compute["preset"]["name"] == nearest_preset(chosen["n"], None).name
    assert params["approaches"]["approach3"]["n"] == approx(1.2e9)
    assert params["preset"]["name"] == nearest_preset(1.2e9, None).name
    assert numbers["holdout"]["points"][0]["N"] == approx(1.618e10, rel=1e-3)
    assert abs(numbers["holdout"]["mean_abs_relative_error"]) < 0.05


def test_the_plots_are_pngs(fitted):
    _, out = fitted
    for name in PLOTS:
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        image = imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) > 300, name


def test_the_cpu_ladder_sweep_law_predicts_its_largest_rung_and_says_what_it_cannot(fitted, capsys):
    """docs/scaling/ladder_points.csv, the README's sweep (4 rungs x 3 WSD budgets): the law fitted on
    3 rungs predicts the 4th within 2%, and warns that such short runs leave E unidentified (the
    Chinchilla points, near convergence, get no such warning)."""
    result = run_main(main, [REPO / "docs" / "scaling" / "ladder_points.csv", "--bootstrap", "10", "--starts", "8",
                             "--holdout-largest"], capsys)
    assert result.returncode == 0, result.stderr
    assert "12 points from" in result.stdout and "4 model sizes" in result.stdout
    assert "E ran to" in result.stdout and "tokens per parameter" in result.stdout
    errors = [float(line.split("error")[-1].strip(" %+")) for line in result.stdout.splitlines()
              if line.strip().startswith("row") or "observed" in line and "predicted" in line]
    assert len(errors) == 3 and max(abs(e) for e in errors) < 2.0, result.stdout
    assert "E ran to" not in fitted[0].stdout


def test_a_prediction_beyond_the_fitted_points_says_so(capsys):
    result = run_main(main, [CHINCHILLA_CSV, "--drop-highest", "5", "--bootstrap", "0", "--starts", "4",
                             "--predict-tokens", "1.4e12"], capsys)
    assert result.returncode == 0, result.stderr
    assert "intervals: none (--bootstrap 0)" in result.stdout
    assert "note: extrapolation: D 1.4e+12 is 4.41x the largest fitted (3.18e+11)" in result.stdout


@pytest.mark.slow
def test_wandb_logs_the_plots_offline(tmp_path, capsys, monkeypatch):
    """--wandb starts W&B's service process (a few seconds): an offline run with the four plots."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = run_main(main, [CHINCHILLA_CSV, "--bootstrap", "0", "--output", tmp_path, "--wandb"], capsys)
    assert result.returncode == 0, result.stderr
    assert "logged to W&B (offline)" in result.stdout
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    images = sorted(p.name.split("_0_")[0] for p in (run / "files" / "media" / "images").glob("*.png"))
    assert images == sorted(name[:-4] for name in PLOTS)
