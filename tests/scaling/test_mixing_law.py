"""The data-mixing law (megallm.scaling.mixing, mixing_study, mixtures; tools/mixing_law.py) on data
generated from a known law of 3 training domains.

Tolerances come from the numbers: with noise, the least-squares estimator's spread is the linearised
sigma^2 (J^T J)^-1 (J: the Jacobian of ln L at the true law); without noise, the data's own rounding
(a few float64 eps of ln L) mapped through the pseudo-inverse of J, plus the solver's step tolerance.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from megallm.cli.mixing_law import main
from megallm.config import compose_config, config_to_yaml
from megallm.scaling.mixing import (
    DomainLaw,
    feasible_point,
    fit_domain,
    idw_baseline,
    jacobian,
    optimal_mixture,
)
from megallm.scaling.mixing_study import Options, analyse, holdout
from megallm.scaling.mixture_runs import read_mixture_runs
from megallm.scaling.mixtures import Mixtures, read_mixture_csv
from tests.helpers import REPO, run_main, run_tool

EPS = np.finfo(float).eps
SOURCES = ("web", "code", "math")
# Each domain's loss falls with its own share (Ye et al.'s fitted t's are of this size) and a little with the others'.
TRUE = [DomainLaw.normalised(2.6, 0.9, [-1.6, 0.3, 0.2]), DomainLaw.normalised(1.1, 1.4, [0.4, -2.2, 0.3]),
        DomainLaw.normalised(1.7, 1.1, [0.1, 0.3, -2.0])]
TRAINED = np.array([[.6, .2, .2], [.2, .6, .2], [.2, .2, .6], [1 / 3, 1 / 3, 1 / 3], [.5, .4, .1], [.1, .5, .4],
                    [.4, .1, .5], [.7, .1, .2], [.1, .7, .2], [.2, .1, .7]])
HELD = np.array([[.45, .35, .2], [.25, .3, .45]])
NOISE = 0.002  # relative: 0.2% of the loss, the seed-to-seed spread of a small proxy run's validation loss
SIGMAS = 4.0  # a bound of 4 standard deviations: 6e-5 two-sided per number under the normal approximation


def exact_losses(r: np.ndarray) -> np.ndarray:
    return np.stack([law.loss(r) for law in TRUE], axis=1)


def noisy_losses(r: np.ndarray, seed: int) -> np.ndarray:
    return exact_losses(r) * (1 + NOISE * np.random.default_rng(seed).standard_normal((len(r), len(TRUE))))


def covariance(law: DomainLaw, r: np.ndarray) -> np.ndarray:
    """sigma^2 (J^T J)^-1 at the true law: the spread of the least-squares estimate of (ln c, ln k, t)."""
    j = jacobian(law.vector, r, np.log(law.loss(r)))
    return NOISE ** 2 * np.linalg.inv(j.T @ j)


def test_a_noisy_sweep_recovers_the_law_within_its_noise_and_beats_the_baseline():
    losses = noisy_losses(TRAINED, seed=3)
    for i, law in enumerate(TRUE):
        fitted = fit_domain(TRAINED, losses[:, i]).law
        spread = np.sqrt(np.diag(covariance(law, TRAINED)))
        assert np.all(np.abs(fitted.vector - law.vector) <= SIGMAS * spread), (i, fitted.vector - law.vector, spread)
        assert fitted.t[-1] == 0.0  # the degeneracy fixed: the reference domain's t
        # held-out mixtures: the law's error against the truth within the propagated spread of ln L
        gradient = jacobian(law.vector, HELD, np.log(law.loss(HELD)))
        predicted_spread = np.sqrt(np.einsum("hp,pq,hq->h", gradient, covariance(law, TRAINED), gradient))
        relative = np.abs(np.log(fitted.loss(HELD)) - np.log(law.loss(HELD)))
        assert np.all(relative <= SIGMAS * predicted_spread), (i, relative, predicted_spread)
    # against observed held-out losses, the law (fitted without them) beats inverse-distance weighting
    both = np.vstack([TRAINED, HELD])
    observed = noisy_losses(both, seed=3)
    mixtures = Mixtures(tuple(f"m{i}" for i in range(len(both))), SOURCES, SOURCES, both, observed)
    held = holdout(mixtures, ("m10", "m11"))
    assert held.names == ("m10", "m11")
    law_error, baseline_error = np.abs(held.law - held.observed), np.abs(held.baseline - held.observed)
    assert np.sqrt(np.mean(law_error ** 2)) < np.sqrt(np.mean(baseline_error ** 2)) / 3
    assert np.all(law_error <= SIGMAS * NOISE * 2 * held.observed)  # the observation's noise plus the law's spread


def test_exact_data_recover_the_law_to_float64_precision():
    losses = exact_losses(TRAINED)
    for i, law in enumerate(TRUE):
        fitted = fit_domain(TRAINED, losses[:, i]).law
        log_loss = np.log(losses[:, i])
        pinv = np.linalg.pinv(jacobian(law.vector, TRAINED, log_loss))
        # rounding of ln L (the loss's exp, sum and log: a few eps each) through pinv, and the solver's xtol step
        tolerance = 8 * EPS * np.abs(pinv) @ np.abs(log_loss) + 4 * EPS * np.linalg.norm(law.vector)
        assert np.all(np.abs(fitted.vector - law.vector) <= tolerance), (i, fitted.vector - law.vector, tolerance)


def test_the_optimiser_finds_the_known_minimum_on_the_simplex():
    """L_i = c_i + k_i exp(-s r_i): the target sum a_i L_i is least where a_i k_i s exp(-s r_i) is the same for
    every i (Lagrange), r_i = 1/m + (ln(a_i k_i) - mean ln(a k)) / s; a bound below that share holds it there
    and the others share the rest by the same rule."""
    s, k, a = 4.0, np.array([0.8, 1.5, 1.1]), np.array([1.0, 2.0, 0.5])
    laws = [DomainLaw.normalised(2.0, k[i], -s * np.eye(3)[i]) for i in range(3)]
    log_ak = np.log(a * k)
    known = 1 / 3 + (log_ak - log_ak.mean()) / s
    found = optimal_mixture(laws, a, np.zeros(3), np.ones(3))
    # SLSQP stops when the target changes by less than ftol (1e-15 of it): r is then within sqrt(2 ftol F / H)
    target, curvature = (a * k * np.exp(-s * known)).sum(), s ** 2 * (a * k * np.exp(-s * known)).min()
    tolerance = 10 * np.sqrt(2 * 1e-15 * target / curvature) + 10 * EPS
    assert found == pytest.approx(known, abs=tolerance)
    top = int(np.argmax(known))
    cap = known[top] - 0.1
    others = [i for i in range(3) if i != top]
    bounded = np.empty(3)
    bounded[top] = cap
    bounded[others] = (1 - cap) / 2 + (log_ak[others] - log_ak[others].mean()) / s
    high = np.ones(3)
    high[top] = cap
    assert optimal_mixture(laws, a, np.zeros(3), high) == pytest.approx(bounded, abs=tolerance)
    assert feasible_point(np.array([0.5, 0, 0]), np.ones(3)) == pytest.approx([0.5, 0.25, 0.25])


def test_the_baseline_interpolates_its_nearest_mixtures():
    r, losses = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]), np.array([[1.0], [3.0], [10.0]])
    assert idw_baseline(r, losses, [0.5, 0.5])[0] == 10.0  # a trained mixture: its own loss
    # [0.25, 0.75]: the 2 nearest are [0.5, 0.5] and [0, 1], at equal distance: their mean
    assert idw_baseline(r, losses, [0.25, 0.75])[0] == pytest.approx(6.5)


def test_the_study_gives_intervals_that_hold_the_truth():
    losses = noisy_losses(TRAINED, seed=5)
    study = analyse(Mixtures(tuple(f"m{i}" for i in range(10)), SOURCES, SOURCES, TRAINED, losses),
                    Options(bootstrap=40, seed=1, keep_best=8))
    r = np.array([0.45, 0.35, 0.2])
    values, spans = study.predict(r)
    for i, law in enumerate(TRUE):
        assert study.has_intervals(i) and spans[i] is not None  # at most 5% of the refits refused
        assert spans[i][0] < values[i] < spans[i][1]
        assert abs(values[i] - law.loss(r)) < SIGMAS * NOISE * law.loss(r)


def write_csv(path: Path, r: np.ndarray, losses: np.ndarray, names=None, prefix: str = "r_") -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", *(f"{prefix}{s}" for s in SOURCES), *(f"loss_{s}" for s in SOURCES)])
        for i, (row, loss) in enumerate(zip(r, losses)):
            writer.writerow([names[i] if names else f"mix{i + 1:02d}", *(f"{v:.6g}" for v in row),
                             *(f"{v:.6g}" for v in loss)])
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    both = np.vstack([TRAINED, HELD])
    return write_csv(tmp_path / "sweep.csv", both, noisy_losses(both, seed=3))


def refusal(capsys, args) -> str:
    result = run_main(main, [*args, "--bootstrap", "0"], capsys)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mixing_law: error: "), result.stderr
    return lines[0]


def test_mixtures_that_cannot_pin_the_law_are_refused_in_one_line(tmp_path, capsys):
    few = write_csv(tmp_path / "few.csv", TRAINED[:4], exact_losses(TRAINED[:4]))
    assert "4 distinct mixtures cannot pin a mixing law of 3 training domains" in refusal(capsys, [few])
    assert "train 1 more mixture(s) (at least 5 in all)" in refusal(capsys, [few])
    code = np.linspace(0.1, 0.7, 7)
    flat = np.column_stack([np.full(7, 0.2), code, 0.8 - code])  # r_web the same everywhere
    constant = write_csv(tmp_path / "constant.csv", flat, exact_losses(flat))
    assert "r_web is 0.2 in every mixture" in refusal(capsys, [constant])
    share = np.linspace(0.1, 0.4, 7)
    line = np.column_stack([share, share, 1 - 2 * share])  # every share varies, but r_web - r_code is always 0
    diagonal = write_csv(tmp_path / "diagonal.csv", line, exact_losses(line))
    assert "1 r_web -1 r_code is the same in all of them" in refusal(capsys, [diagonal])


def test_bad_rows_and_options_are_refused_in_one_line(tmp_path, capsys, sweep):
    off = TRAINED.copy()
    off[2] = [0.5, 0.3, 0.3]
    wrong_sum = write_csv(tmp_path / "sum.csv", off, exact_losses(TRAINED))
    assert "sum.csv:4: the r_ columns sum to 1.1, not 1" in refusal(capsys, [wrong_sum])
    # the same row as weights is normalised to [0.4545, 0.2727, 0.2727]
    normalised = off / off.sum(axis=1, keepdims=True)
    weights = write_csv(tmp_path / "weights.csv", off, exact_losses(normalised), prefix="weight_")
    fitted = run_main(main, [weights, "--bootstrap", "0"], capsys)
    assert fitted.returncode == 0 and "domain web: RMSE" in fitted.stdout
    negative = TRAINED.copy()
    negative[1] = [-0.1, 0.6, 0.5]
    assert "column 'r_web' must hold a proportion >= 0, got '-0.1'" in \
        refusal(capsys, [write_csv(tmp_path / "neg.csv", negative, exact_losses(TRAINED))])
    assert "--target: 'wiki' is not a domain of these mixtures; they are 'web', 'code', 'math'" in \
        refusal(capsys, [sweep, "--target", "web=1,wiki=2"])
    assert "--holdout 'mix99' names no mixture" in refusal(capsys, [sweep, "--holdout", "mix99"])
    assert "no mixture meets the bounds" in refusal(capsys, [sweep, "--min", "web=0.6", "--min", "code=0.6"])
    twice = np.vstack([TRAINED, TRAINED[3:4]])
    losses = np.vstack([exact_losses(TRAINED), exact_losses(TRAINED[3:4]) * 1.01])
    duplicated = write_csv(tmp_path / "twice.csv", twice, losses)
    line = refusal(capsys, [duplicated])
    assert "twice.csv:5 and" in line and "twice.csv:12 hold the same mixture" in line and "--duplicates mean" in line
    averaged = run_main(main, [duplicated, "--duplicates", "mean", "--bootstrap", "0"], capsys)
    assert averaged.returncode == 0 and "1 mixtures are held by 2 rows" in averaged.stdout
    assert "10 mixtures of 3 training domains" in averaged.stdout


@pytest.mark.slow
def test_the_command_line_end_to_end(tmp_path, sweep):
    out = tmp_path / "fit"
    result = run_tool("mixing_law", sweep, "--holdout", "mix11", "mix12", "--predict", "web=0.5,code=0.3,math=0.2",
                      "--target", "web=1,code=1,math=1", "--max", "code=0.4", "--bootstrap", "20", "--starts", "8",
                      "--output", out)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "12 mixtures of 3 training domains (web, code, math)" in result.stdout
    assert "t_math  0 (reference)" in result.stdout and "20/20 resamples refitted" in result.stdout
    assert "optimal mixture for 1 x loss_web + 1 x loss_code + 1 x loss_math (code in [0, 0.4])" in result.stdout
    numbers = json.loads((out / "fit.json").read_text())
    assert set(numbers["domains"]) == set(SOURCES) and numbers["reference"] == "math"
    for domain, law in zip(SOURCES, TRUE):
        assert numbers["domains"][domain]["t"]["math"] == 0.0
        assert numbers["domains"][domain]["c"] == pytest.approx(law.c, rel=0.2)
    optimum = numbers["optimum"]
    assert sum(optimum["proportions"].values()) == pytest.approx(1.0, abs=1e-9)
    assert optimum["proportions"]["code"] <= 0.4 + 1e-9
    held = numbers["holdout"]
    law_error = [abs(h["law"][d] - h["observed"][d]) for h in held for d in SOURCES]
    baseline_error = [abs(h["baseline"][d] - h["observed"][d]) for h in held for d in SOURCES]
    assert np.mean(np.square(law_error)) < np.mean(np.square(baseline_error))
    for name in ("mixing_fit.png", *(f"mixing_path_{s}.png" for s in SOURCES)):
        assert imread(out / name).shape[0] > 100
    assert result.stdout.splitlines()[-1] == f"wrote {out / 'fit.json'} and 4 plots in {out}"
    assert (REPO / "tools" / "mixing_law.py").read_text().count("\n") < 10


# ---- run folders: a sweep over data.sources weights ----------------------------------------------------
STEPS = 100


@pytest.fixture(scope="module")
def run_config_yaml() -> dict:
    """A tiny run's resolved config over data.sources web, code and math, as launch/pretrain.py writes it."""
    cfg, _ = compose_config(["+model=tiny", "model.vocab_size=4096", "train.seq_len=128", f"train.steps={STEPS}",
                             "train.global_batch_tokens=1024", *(f"+data.sources.{s}.path=data/mixtures/{s}"
                                                                 for s in SOURCES)])
    return yaml.safe_load(config_to_yaml(cfg))


def write_run(folder: Path, config: dict, weights: dict, losses: dict, last_step: int = STEPS) -> Path:
    """A run folder as a finished (or, with last_step < STEPS, interrupted) tiny mixture run leaves it: its
    config.yaml with these weights, and metrics.jsonl's records in the keys and order a real run writes."""
    folder.mkdir(parents=True)
    config = json.loads(json.dumps(config))
    config["run_dir"] = str(folder)
    config["data"]["sources"] = {name: {"path": f"data/mixtures/{name}", **({"weight": w} if w is not None else {})}
                                 for name, w in weights.items()}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    tokens = {name: 0 for name in weights}
    records = []
    for step in range(10, last_step + 1, 10):
        for name in tokens:
            tokens[name] += 10 * 1024 // len(tokens)
        records.append({"time": 1796631875.0 + step, "kind": "train", "step": step, "total_steps": STEPS,
                        "loss": 6.2, "lr": 1e-3, "grad_norm": 1.0, "tokens_seen": step * 1024,
                        "flops_seen": 1.3e9 * step, "epoch": 0.01 * step, "skipped_shards": 0.0,
                        **{f"{name}/tokens": n for name, n in tokens.items()}, "tokens_per_s": 3700.0,
                        "step_time_s": 0.07, "tflops_per_device": 0.005, "mfu": None, "eta_s": 0.0})
    if last_step == STEPS:
        val = sum(losses.values()) / len(losses)
        records.append({"time": 1796631999.0, "kind": "eval", "step": STEPS, "val_loss": val, "val_ppl": np.exp(val),
                        **{f"{name}/loss": loss for name, loss in losses.items()}, "tokens_seen": STEPS * 1024,
                        "flops_seen": 1.3e11})
        records.append({"time": 1796631999.5, "kind": "mixture", "step": STEPS,
                        **{f"{name}/share": 1 / len(tokens) for name in tokens}, **{f"{n}/tokens": t for n, t in tokens.items()}})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture
def run_sweep(tmp_path, run_config_yaml) -> Path:
    """TRAINED and HELD as runs (weights: proportions x 5; math's left at its default 1 where it is 0.2), and
    one interrupted run."""
    both = np.vstack([TRAINED, HELD])
    root = tmp_path / "sweep"
    for i, (r, losses) in enumerate(zip(both, noisy_losses(both, seed=3))):
        weights = {s: (None if s == "math" and abs(share - 0.2) < 1e-12 else float(5 * share))
                   for s, share in zip(SOURCES, r)}
        write_run(root / f"mix{i + 1:02d}", run_config_yaml, weights, dict(zip(SOURCES, losses)))
    write_run(root / "late" / "mix13", run_config_yaml, {"web": 1.0, "code": 2.0, "math": 3.0}, {}, last_step=60)
    return root


def test_a_folder_of_runs_gives_the_mixtures_of_its_finished_runs(run_sweep, sweep, capsys):
    notes: list[str] = []
    runs = read_mixture_runs(run_sweep, note=notes.append)
    table = read_mixture_csv(sweep, note=notes.append)
    assert notes == ["note: late/mix13 is not finished (last step 60 of 100); left out"]
    assert runs.names == table.names and runs.sources == runs.domains == SOURCES
    assert np.abs(runs.proportions - np.vstack([TRAINED, HELD])).max() < 4 * EPS
    assert np.array_equal(runs.losses, noisy_losses(np.vstack([TRAINED, HELD]), seed=3))
    fitted = run_main(main, [run_sweep, "--holdout", "mix11", "mix12", "--bootstrap", "0", "--starts", "4"], capsys)
    assert fitted.returncode == 0, fitted.stderr
    assert "12 mixtures of 3 training domains (web, code, math)" in fitted.stdout
    assert "late/mix13 is not finished" in fitted.stdout


def test_run_folders_that_cannot_be_one_mixing_law_are_refused_in_one_line(tmp_path, capsys, run_config_yaml):
    plain = dict(run_config_yaml, data={**run_config_yaml["data"], "sources": {}})
    one = write_run(tmp_path / "plain" / "run", plain, {"web": 1.0, "code": 1.0}, {"web": 3.0, "code": 2.0})
    (one / "config.yaml").write_text(yaml.safe_dump(dict(plain, run_dir=str(one)), sort_keys=False))
    assert f"{one / 'config.yaml'} has no data.sources (it trained on data.path alone)" in \
        refusal(capsys, [tmp_path / "plain"])
    write_run(tmp_path / "differ" / "a", run_config_yaml, {"web": 1.0, "code": 2.0}, {"web": 3.0, "code": 2.0})
    write_run(tmp_path / "differ" / "b", run_config_yaml, {"web": 1.0, "math": 2.0}, {"web": 3.0, "math": 2.0})
    assert "runs a and b under" in refusal(capsys, [tmp_path / "differ"])
    assert "train different sources (web, code and web, math)" in refusal(capsys, [tmp_path / "differ"])
    write_run(tmp_path / "running" / "a", run_config_yaml, {"web": 1.0, "code": 2.0}, {}, last_step=30)
    assert "none of the 1 run(s) under" in refusal(capsys, [tmp_path / "running"])
    assert refusal(capsys, [tmp_path / "empty_dir_missing"]).endswith("does not exist; give a CSV file or a folder "
                                                                       "of runs")
    (tmp_path / "nothing").mkdir()
    assert "no run folders under" in refusal(capsys, [tmp_path / "nothing"])
    lost = write_run(tmp_path / "lost" / "a", run_config_yaml, {"web": 1.0, "code": 2.0}, {"web": 3.0})
    assert f"{lost / 'metrics.jsonl'}: the final eval record (step 100) has no number for 'code/loss'" in \
        refusal(capsys, [tmp_path / "lost"])
