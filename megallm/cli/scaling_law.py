"""`tools/scaling_law.py`: Chinchilla scaling-law fits from finished megallm runs or a CSV.

    python tools/scaling_law.py runs/sweep --predict-compute 1e21 --output fits/sweep
    python tools/scaling_law.py tests/fixtures/chinchilla/svg_extracted_data.csv --drop-highest 5

The logic lives in megallm.scaling; this parses the command line, prints the table and writes
fit.json, the plots and (with --wandb) a W&B run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

from megallm.cli import run_command
from megallm.errors import UsageError
from megallm.extras import require

PROG = "scaling_law"

DESCRIPTION = """\
Fit how the final loss scales with model size N and training tokens D, three ways (Hoffmann et al.
2022, "Training Compute-Optimal Large Language Models"):
  1. the lower envelope of loss vs compute C, and N_opt(C) ∝ C^a, D_opt(C) ∝ C^b on it;
  2. IsoFLOP: a parabola of loss vs ln N per compute level, its minimum N_opt(C), the same power laws;
  3. L(N, D) = E + A/N^alpha + B/D^beta by summed Huber loss (delta 1e-3) on log loss, L-BFGS-B from
     Hoffmann's grid of 4500 starts (Epoch AI's replication procedure), and a = beta/(alpha+beta);
     compute-optimal N and D under C = 6ND. (Epoch's headline A 482.0, B 2085 is a Huber likelihood
     with a free scale; the summed Huber loss gives A 477.8, B 2143 on their data.)
with bootstrap percentile intervals (points resampled with replacement) for every number.

INPUT is a CSV file (columns, in any case: `Model Size`/`N`/`params`, `Training FLOP`/`C`/`FLOPs`/
`budget` and/or `D`/`tokens` (C = 6ND, D = C / 6N for the missing one), `loss`/`final_loss`/
`validation_loss`, optionally `name`; a given C is what approaches 1 and 2 group by) or a folder
searched for megallm runs (config.yaml + metrics.jsonl). A run counts when finished: its eval at the
last step gives the loss; N is the total parameter count, embeddings included (Chinchilla's
convention); C = FLOPs per token (megallm.model.flops) x tokens. Unfinished runs are left out with a
note. Each point is one run: two rows (or runs) of the same N and D are refused (--duplicates mean
averages them). A law that does not converge or sits on its bounds is reported as not fitted.
"""

EPILOG = """\
examples:
  # Epoch AI's points from the Chinchilla paper, with their outlier rule (gives A 477.8, B 2143,
  # E 1.817, alpha 0.347, beta 0.367)
  python tools/scaling_law.py tests/fixtures/chinchilla/svg_extracted_data.csv --drop-highest 5
  # a table of several experiments, each run once per kind of loss: keep one
  python tools/scaling_law.py isoflops.csv --where condition=raw_loss --predict-compute 3.8e25
  # a sweep of runs: the model for 1e21 FLOPs, plots and fit.json in fits/sweep
  python tools/scaling_law.py runs/sweep --predict-compute 1e21 --output fits/sweep
  # how well does the law predict the largest model it did not see?
  python tools/scaling_law.py runs/sweep --holdout-largest
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python tools/scaling_law.py", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, metavar="INPUT", help="CSV file, or folder of megallm runs")
    points = parser.add_argument_group("points")
    points.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                        help="keep only the CSV rows whose COLUMN holds VALUE (repeatable): one experiment, or one "
                             "kind of loss, of a table holding several")
    points.add_argument("--duplicates", choices=("refuse", "mean"), default="refuse",
                        help="rows (or runs) of the same N and D: refuse them (default), or average their losses "
                             "into one point")
    fit = parser.add_argument_group("fitting")
    fit.add_argument("--drop-highest", type=int, default=0, metavar="K",
                     help="leave out the K points of highest loss first (Epoch's rule on the Chinchilla CSV: 5)")
    fit.add_argument("--isoflop", choices=("auto", "levels", "interpolate"), default="auto",
                     help="approach 2's compute levels: shared by the points (an IsoFLOP sweep), interpolated per "
                          "model size (a sweep of sizes x token budgets), or auto (default)")
    fit.add_argument("--starts", type=int, default=32, metavar="K",
                     help="approach 3: the objective is evaluated at all 4500 grid starts, L-BFGS-B runs from the K "
                          "lowest (default 32; 4500: from every start, about 100x slower, the same optimum on the "
                          "Chinchilla data)")
    fit.add_argument("--bootstrap", type=int, default=200, metavar="R",
                     help="bootstrap resamples (0: no intervals); each refits approach 3 from its own 4 best grid "
                          "starts, and an approach whose refits fail in more than 1 - confidence of them gets none")
    fit.add_argument("--confidence", type=float, default=0.95, help="interval coverage (default 0.95)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    pred = parser.add_argument_group("prediction (compute-optimal, by every approach that fitted, with the one the "
                                     "points support best: the other of N and D follows)")
    pred.add_argument("--predict-compute", type=float, metavar="FLOPS", help="a compute budget, e.g. 1e21")
    pred.add_argument("--predict-params", type=float, metavar="N", help="a model size, e.g. 1.2e9")
    pred.add_argument("--predict-tokens", type=float, metavar="D", help="a token budget, e.g. 2e10")
    pred.add_argument("--vocab-size", type=int, metavar="V",
                      help="the vocabulary of the presets whose vocab_size is null, for the nearest preset's "
                           "parameter count (default: the runs'; 32000 for a CSV)")
    held = parser.add_argument_group("holdout: approach 3 without some points, and its error on them")
    which = held.add_mutually_exclusive_group()
    which.add_argument("--holdout", metavar="GLOB", help="leave out the runs whose names (paths under INPUT) match")
    which.add_argument("--holdout-largest", action="store_true", help="leave out the runs of the largest model size")
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, metavar="DIR", help="write fit.json and PNG plots here")
    out.add_argument("--wandb", action="store_true",
                     help="log the numbers and plots to a W&B run (WANDB_MODE, default offline; WANDB_PROJECT, "
                          "default megallm)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    require("scaling", "tools/scaling_law.py")
    # deferred: numpy, scipy and OmegaConf (~1 s); --help and usage errors need not wait
    from megallm.files import atomic_write_text
    from megallm.scaling import predict, report
    from megallm.scaling.points import read_points
    from megallm.scaling.study import Options, analyse

    options = Options(drop_highest=args.drop_highest, bootstrap=args.bootstrap, seed=args.seed,
                      confidence=args.confidence, isoflop=args.isoflop, keep_best=args.starts)
    if args.vocab_size is not None and args.vocab_size < 1:
        raise UsageError(f"--vocab-size must be >= 1, got {args.vocab_size}")
    points = read_points(args.input, note=print, duplicates=args.duplicates, where=args.where)
    if args.holdout or args.holdout_largest:  # a bad choice is reported before the seconds of fitting
        predict.select_holdout(points.without_highest(args.drop_highest), args.holdout_largest, args.holdout)
    study = analyse(points, options)
    asked = [(given, getattr(args, f"predict_{given}")) for given in predict.GIVEN]
    predictions = [predict.predict(study, given, value, args.vocab_size) for given, value in asked
                   if value is not None]
    held = None
    if args.holdout or args.holdout_largest:
        held = predict.holdout(study, largest=args.holdout_largest, pattern=args.holdout)
    source = str(args.input)
    print(report.render(study, source, predictions, held))
    numbers = report.to_json(study, source, predictions, held)
    plots: list[Path] = []
    if args.output:
        try:
            args.output.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.output / "fit.json", _json(numbers))
            plots = _plots(study, args.output, held, predictions)
        except OSError as exc:
            raise UsageError(f"cannot write to --output {args.output}: {exc.strerror or exc}") from exc
        print(f"wrote {args.output / 'fit.json'} and {len(plots)} plots in {args.output}")
    if args.wandb:
        _log_wandb(study, numbers, plots, held, predictions, args.output)
    return 0


def _json(numbers: dict) -> str:
    return json.dumps(numbers, indent=2, allow_nan=False, default=float) + "\n"


def _plots(study, folder: Path, held, predictions) -> list[Path]:
    from megallm.scaling.plots import draw_all  # deferred: matplotlib (~1 s), only for plots

    return draw_all(study, folder, held, predictions)


def _log_wandb(study, numbers: dict, plots: list[Path], held, predictions, output: Optional[Path]) -> None:
    """One W&B run: the fitted numbers as its summary and config, the plots as images. Offline unless
    WANDB_MODE says otherwise (W&B's legacy dryrun / run read as offline / online)."""
    try:
        import wandb  # optional: only --wandb needs it
    except ImportError as exc:
        raise UsageError("--wandb needs the wandb package: pip install wandb") from exc
    from megallm.config import wandb_mode  # deferred: Hydra's imports, for --wandb only

    mode = wandb_mode(os.environ.get("WANDB_MODE") or "offline")
    if mode is None:
        raise UsageError(f"WANDB_MODE must be offline, online or disabled, got {os.environ['WANDB_MODE']!r}")
    with tempfile.TemporaryDirectory() as scratch:
        if not plots:
            plots = _plots(study, Path(scratch), held, predictions)
        run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "megallm", job_type="scaling_law",
                         mode=mode,
                         dir=str(output) if output else None,
                         config={"source": numbers["source"], **numbers["options"]})
        run.summary.update(_flatten({k: numbers[k] for k in ("approach1", "approach2", "approach3", "intervals")
                                     if k in numbers}))
        run.log({path.stem: wandb.Image(str(path)) for path in plots})
        run.finish()
    print(f"logged to W&B ({mode})")


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}, leaving out lists of records (points, levels)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            out[name] = value
        elif isinstance(value, (int, float, str)) or value is None:
            out[name] = value
    return out
