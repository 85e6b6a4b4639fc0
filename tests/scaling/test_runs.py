"""Reading megallm run folders into points, and every bad input as one line on stderr (exit code 2)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from pytest import approx

from megallm.cli.scaling_law import main
from megallm.config.compose import compose_config, config_from_yaml
from megallm.model.flops import flops_per_token, parameter_count
from megallm.scaling.parametric import Law
from megallm.scaling.points import read_runs
from megallm.scaling.predict import CSV_PRESET_VOCAB, nearest_preset, presets
from tests.helpers import assert_one_line_error, run_main
from tests.scaling.inputs import CHINCHILLA_CSV, run_records, write_run

SEQ_LEN, BATCH_TOKENS = 64, 1024
TRAIN = [f"train.seq_len={SEQ_LEN}", f"train.global_batch_tokens={BATCH_TOKENS}", "train.micro_batch_size=4",
         "train.steps=10"]
SIZES = {  # three shapes around +model=tiny
    "s": ["model.hidden_size=128", "model.num_layers=2", "model.ffn_hidden_size=384"],
    "m": [],
    "l": ["model.hidden_size=384", "model.num_layers=6", "model.ffn_hidden_size=1024"],
}
LAW = Law(A=40.0, B=60.0, E=1.5, alpha=0.3, beta=0.25)


@pytest.fixture(scope="module")
def configs() -> dict[str, str]:
    """config.yaml text per size (vocabulary 8192, 10 steps)."""
    return {size: compose_config(["+model=tiny", "model.vocab_size=8192", *TRAIN, *extra])[1]
            for size, extra in SIZES.items()}


def with_steps(config_yaml: str, steps: int, **more) -> str:
    return config_from_yaml(config_yaml, {"train.steps": steps, **more})[1]


@functools.lru_cache(maxsize=None)
def read_config(config_yaml: str):
    return config_from_yaml(config_yaml)[0]


def expected(config_yaml: str, tokens: float) -> tuple[int, float, float]:
    cfg = read_config(config_yaml)
    return parameter_count(cfg.model).total, tokens, flops_per_token(cfg.model, SEQ_LEN) * tokens


@pytest.fixture(scope="module")
def budgets(configs) -> dict[tuple[str, int], str]:
    """config.yaml text per (size, steps)."""
    return {(size, steps): with_steps(text, steps) for size, text in configs.items() for steps in (10, 20, 40)}


@pytest.fixture
def sweep(tmp_path, budgets):
    """3 sizes x 3 budgets (10, 20 and 40 steps), finished, losses from LAW."""
    root = tmp_path / "sweep"
    for (size, steps), text in budgets.items():
        n, d, _ = expected(text, steps * BATCH_TOKENS)
        write_run(root / size / f"steps{steps}", text, run_records(steps, BATCH_TOKENS, float(LAW.loss(n, d))))
    return root


def cli(args, capsys):
    return run_main(main, args, capsys)


def test_finished_runs_give_n_d_c_and_final_loss(sweep, budgets):
    notes = []
    points = read_runs(sweep, notes.append)
    assert notes == [] and len(points) == 9 and points.source == "runs" and points.vocab_size == 8192
    assert points.names[0] == "l/steps10"  # the folder under the root
    for name, n, d, c, loss in zip(points.names, points.n, points.d, points.c, points.loss):
        size, steps = name.split("/")
        want_n, want_d, want_c = expected(budgets[size, int(steps[5:])], int(steps[5:]) * BATCH_TOKENS)
        assert (n, d, c) == (want_n, want_d, approx(want_c))
        assert loss == approx(float(LAW.loss(want_n, want_d)))
    assert len(points.size_groups()) == 3


def test_tokens_fall_back_to_train_records_then_to_the_config(tmp_path, configs):
    text = configs["m"]
    records = run_records(10, 1000, 3.0, eval_tokens=False)  # 1000 tokens per step, as the train records say
    write_run(tmp_path / "a", text, records)
    write_run(tmp_path / "b", text, [r for r in records if r["kind"] == "eval"])
    points = read_runs(tmp_path)
    assert dict(zip(points.names, points.d)) == {"a": 10 * 1000, "b": 10 * BATCH_TOKENS}


def test_a_cooldown_branch_that_logs_from_its_branch_step_counts(tmp_path, configs):
    records = [r for r in run_records(20, BATCH_TOKENS, 2.5) if r["step"] >= 15]
    write_run(tmp_path / "wsd" / "cooldown", with_steps(configs["m"], 20), records)
    points = read_runs(tmp_path)
    assert points.names == ("wsd/cooldown",) and points.loss[0] == 2.5 and points.d[0] == 20 * BATCH_TOKENS


def test_unfinished_and_crashed_runs_are_left_out_with_a_note(sweep, configs, capsys):
    write_run(sweep / "x" / "y", configs["m"], run_records(10, BATCH_TOKENS, 3.0, last=5))
    crashed = run_records(10, BATCH_TOKENS, 3.0, last=10)
    write_run(sweep / "crash", configs["m"], crashed[:1], tail=json.dumps(crashed[1])[:20])
    result = cli([sweep, "--bootstrap", "0", "--starts", "4"], capsys)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "note: x/y is not finished (last step 5 of 10); left out" in result.stdout.splitlines()
    assert "note: crash is not finished (last step 5 of 10; metrics.jsonl:2 is cut off mid-line); left out" \
        in result.stdout.splitlines()
    assert "9 points from" in result.stdout


def test_the_law_predicts_a_held_out_run(sweep, capsys):
    """Noise-free losses of LAW: fitted without l/steps40, approach 3 predicts it (and gives LAW back)."""
    result = run_main(main, [sweep, "--bootstrap", "0", "--starts", "4", "--holdout", "l/steps40",
                             "--predict-params", "2e7"], capsys)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "holdout: approach 3 fitted without the points matching 'l/steps40', 1 point (A 40, B 60, E 1.5, " \
           "alpha 0.3, beta 0.25); its error on them:" in lines
    row = next(line for line in lines if line.strip().startswith("l/steps40"))
    assert row.endswith(("error +0.00%", "error -0.00%"))
    preset = nearest_preset(2e7, 8192)  # conf/model/ changes: ask it which preset is nearest
    assert f"nearest preset: +model={preset.name} ({preset.params:.3g} parameters, vocabulary {preset.vocab_size}" \
        in result.stdout
    assert min(abs(np.log(p.params / 2e7)) for p in presets(8192)) == abs(np.log(preset.params / 2e7))
    # presets with vocab_size null take the runs' vocabulary; a CSV input would give them 32000
    assert {p.vocab_size for p in presets(8192) if p.vocab_source != "preset"} == {8192}
    assert {p.vocab_size for p in presets(None) if p.vocab_source != "preset"} == {CSV_PRESET_VOCAB}


def test_null_vocab_size_is_read_from_the_corpus_manifest(tmp_path, configs, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest.json").write_text(json.dumps({"vocab_size": 512}))
    monkeypatch.chdir(tmp_path)  # data.path is relative to the working folder
    text = with_steps(configs["m"], 10, **{"model.vocab_size": None, "data.path": "corpus"})
    write_run(tmp_path / "runs" / "a", text, run_records(10, BATCH_TOKENS, 3.0))
    points = read_runs(tmp_path / "runs")
    cfg, _ = config_from_yaml(text)
    cfg.model.vocab_size = 512
    assert points.vocab_size == 512 and points.n[0] == parameter_count(cfg.model).total


def bad_input(tmp_path, configs, case: str):
    """(command-line arguments, phrases of the one error line) for each bad input."""
    root = tmp_path / case
    if case == "missing path":
        return [root], [f"{root} does not exist"]
    if case == "no run folders":
        root.mkdir()
        (root / "notes.txt").write_text("nothing here")
        return [root], ["no run folders under", "config.yaml and metrics.jsonl"]
    if case == "nothing finished":
        write_run(root / "a", configs["m"], run_records(10, BATCH_TOKENS, 3.0, last=5))
        return [root], ["none of the 1 run(s)", "is finished"]
    if case == "one model size":
        for steps in (10, 20, 30):
            write_run(root / f"r{steps}", with_steps(configs["m"], steps), run_records(steps, BATCH_TOKENS, 3.0))
        return [root], ["the 3 finished runs have 1 model size (N = ", "need at least 3 model sizes"]
    if case == "corrupt line":
        records = run_records(10, BATCH_TOKENS, 3.0)
        folder = write_run(root / "a", configs["m"], records)
        lines = (folder / "metrics.jsonl").read_text().splitlines(keepends=True)
        lines[1] = lines[1][:15] + "\n"
        (folder / "metrics.jsonl").write_text("".join(lines))
        return [root], [f"{folder / 'metrics.jsonl'}:2 is not a JSON object"]
    if case == "csv columns":
        csv = tmp_path / "points.csv"
        csv.write_text("size,Training FLOP,final\n1e8,1e19,3.0\n")
        return [csv], ["lacks the column(s) for N: 'Model Size' or 'N' or 'params'", "loss: 'loss' or",
                       "its columns are 'size', 'Training FLOP', 'final'"]
    if case == "csv value":
        csv = tmp_path / "points.csv"
        csv.write_text("N,C,loss\n1e8,1e19,3.0\n2e8,lots,2.9\n")
        return [csv], [f"{csv}:3: column 'C' must hold a positive number, got 'lots'"]
    if case == "vocab without manifest":
        text = with_steps(configs["m"], 10, **{"model.vocab_size": None, "data.path": str(tmp_path / "nowhere")})
        write_run(root / "a", text, run_records(10, BATCH_TOKENS, 3.0))
        return [root], ["has model.vocab_size null", "manifest.json cannot be read"]
    if case == "not a config":
        write_run(root / "a", "model: [1, 2\n", run_records(10, BATCH_TOKENS, 3.0))
        return [root], [f"{root / 'a' / 'config.yaml'} is not a megallm run config"]
    if case == "holdout matches nothing":
        return [CHINCHILLA_CSV, "--holdout", "runs/*", "--bootstrap", "0"], ["--holdout 'runs/*' matches none"]
    if case == "output is a file":
        return [CHINCHILLA_CSV, "--bootstrap", "0", "--starts", "1", "--output", CHINCHILLA_CSV], [
            f"cannot write to --output {CHINCHILLA_CSV}"]
    if case == "no starts":
        return [CHINCHILLA_CSV, "--starts", "0"], ["--starts must be >= 1, got 0"]
    if case == "holdout leaves too few":
        return [CHINCHILLA_CSV, "--holdout", "*.csv:[1-9]*"], ["without the points matching '*.csv:[1-9]*', no points "
                                                                "are left to fit"]
    if case == "drop everything":
        return [CHINCHILLA_CSV, "--drop-highest", "245"], ["would leave none of the 245 points"]
    raise AssertionError(case)


BAD_INPUTS = ["missing path", "no run folders", "nothing finished", "one model size", "corrupt line", "csv columns",
              "csv value", "vocab without manifest", "not a config", "holdout matches nothing",
              "holdout leaves too few", "no starts", "output is a file", "drop everything"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line(tmp_path, configs, capsys, case):
    args, phrases = bad_input(tmp_path, configs, case)
    result = cli(args, capsys)
    assert_one_line_error(result, *phrases, prefix="scaling_law: error: ")


def test_csv_columns_by_their_usual_names_in_any_case(tmp_path):
    """Tables from other tools: `params`/`Tokens`/`Final_Loss` and a `name` column; C = 6ND when absent."""
    from megallm.scaling.points import read_csv

    path = tmp_path / "other.csv"
    path.write_text("name,Params,Tokens,Final_Loss\nsmall,1e8,2e9,3.1\nlarge,4e8,8e9,2.7\n")
    points = read_csv(path)
    assert points.names == ("small", "large")
    assert list(points.n) == [1e8, 4e8] and list(points.d) == [2e9, 8e9] and list(points.loss) == [3.1, 2.7]
    assert list(points.c) == approx([6 * 1e8 * 2e9, 6 * 4e8 * 8e9])
