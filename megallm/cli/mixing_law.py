"""`tools/mixing_law.py`: a data-mixing law (Ye et al. 2024) from a table of trained mixtures, or from a
folder of megallm runs over data.sources (a sweep over their weights).

    python tools/mixing_law.py sweep.csv --holdout mix09 mix10 --target web=1,code=1,math=1 --output fits/mix
    python tools/mixing_law.py runs/mix --holdout 'data.sources.code.weight=3' --output fits/mix

The logic lives in megallm.scaling (mixtures, mixing, mixing_study); this parses the command line,
prints the table and writes fit.json and the plots.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from megallm.cli import run_command
from megallm.errors import UsageError
from megallm.extras import require

PROG = "mixing_law"

DESCRIPTION = """\
Fit a data-mixing law (Ye et al. 2024, "Data Mixing Laws"): the validation loss of each evaluated domain i
after training on the mixture r (proportions of the training domains, summing to 1) is
    L_i(r) = c_i + k_i exp(sum_j t_ij r_j)
with t of the last training domain fixed at 0 (only differences of t are determined, since sum r = 1).
Each domain is fitted by least squares on ln L with a trust-region solver from the best of 256 seeded starts,
with bootstrap percentile intervals (mixtures resampled with replacement) for every number. Then: the
losses of untried mixtures, the law's error on held-out mixtures against a naive baseline (inverse-distance
weighting of the nearest trained mixtures), and the mixture minimising a weighted sum of the losses.

INPUT is a CSV with one row per trained mixture: optionally `name`; the mixture as r_<domain> columns
(proportions summing to 1 within 0.02, then normalised) or weight_<domain> columns (any non-negative
weights, normalised per row); and loss_<domain> columns, the validation loss per evaluated domain.
Or INPUT is a folder of megallm runs (a sweep's folder), searched recursively: each finished run is a
mixture, its data.sources weights from its config.yaml (normalised), its loss per source from the final
eval record's <source>/loss; a run's name is its folder under INPUT; unfinished runs are left out with a
note. Two rows (runs) of the same mixture are refused (--duplicates mean averages them). Mixtures that cannot pin the law (fewer
than m + 2 distinct for m training domains, or no variation along some direction) are refused in one line.
"""

EPILOG = """\
examples:
  # fit, check on two held-out mixtures, and the mixture that minimises the mean loss
  python tools/mixing_law.py sweep.csv --holdout mix09 mix10 --output fits/mix
  # the loss of an untried mixture, and the best one with at least 10% math and at most 60% web
  python tools/mixing_law.py sweep.csv --predict web=0.5,code=0.3,math=0.2 --target web=1,code=2 \\
      --min math=0.1 --max web=0.6
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python tools/mixing_law.py", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, metavar="INPUT",
                        help="CSV file, one row per trained mixture, or a folder of runs over data.sources")
    parser.add_argument("--duplicates", choices=("refuse", "mean"), default="refuse",
                        help="rows of the same mixture: refuse them (default), or average their losses")
    fit = parser.add_argument_group("fitting")
    fit.add_argument("--starts", type=int, default=32, metavar="K",
                     help="the solver runs from the K best of 256 seeded starts per domain (default 32)")
    fit.add_argument("--bootstrap", type=int, default=200, metavar="R", help="bootstrap resamples (0: no intervals)")
    fit.add_argument("--confidence", type=float, default=0.95, help="interval coverage (default 0.95)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the starts and of the bootstrap resampling")
    use = parser.add_argument_group("use")
    use.add_argument("--holdout", nargs="+", default=[], metavar="NAME",
                     help="leave these mixtures (name column, else FILE:LINE; a run's folder under INPUT) out of a "
                          "second fit and report its "
                          "error on them against the nearest-mixture baseline")
    use.add_argument("--predict", action="append", default=[], metavar="DOMAIN=SHARE,...",
                     help="an untried mixture (repeatable); domains left out get 0")
    use.add_argument("--target", metavar="DOMAIN=WEIGHT,...",
                     help="weights of the evaluated domains' losses to minimise (default: 1 each; left out: 0)")
    use.add_argument("--min", action="append", default=[], metavar="DOMAIN=SHARE",
                     help="the optimum's least share of a training domain (repeatable)")
    use.add_argument("--max", action="append", default=[], metavar="DOMAIN=SHARE",
                     help="the optimum's largest share of a training domain (repeatable)")
    parser.add_argument("--output", type=Path, metavar="DIR", help="write fit.json and PNG plots here")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(args))


def assignments(texts: list[str], option: str) -> dict[str, float]:
    """"a=0.5,b=0.3" (several texts joined) -> {"a": 0.5, "b": 0.3}; a UsageError for anything else."""
    found: dict[str, float] = {}
    for text in texts:
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            try:
                found[name.strip()] = float(value)
            except ValueError:
                sep = ""
            if not sep or not name.strip():
                raise UsageError(f"{option} {text!r}: expected DOMAIN=NUMBER[,DOMAIN=NUMBER...]")
    return found


def run(args: argparse.Namespace) -> int:
    require("scaling", "tools/mixing_law.py")
    # deferred: numpy and scipy (~0.5 s); --help and usage errors need not wait
    import numpy as np

    from megallm.files import atomic_write_text
    from megallm.scaling import mixing_report, mixing_study
    from megallm.scaling.mixture_runs import read_mixture_runs
    from megallm.scaling.mixtures import read_mixture_csv

    if args.bootstrap < 0 or args.starts < 1 or not 0 < args.confidence < 1:
        raise UsageError("--bootstrap must be >= 0, --starts >= 1 and --confidence within (0, 1)")
    if not args.input.exists():
        raise UsageError(f"{args.input} does not exist; give a CSV file or a folder of runs")
    read = read_mixture_runs if args.input.is_dir() else read_mixture_csv
    mixtures = read(args.input, args.duplicates, note=print)
    sources, domains = mixtures.sources, mixtures.domains
    wanted = [mixing_study.proportions_of(assignments([text], "--predict"), sources, f"--predict {text!r}")
              for text in args.predict]
    weights = (mixing_study.per_name(assignments([args.target], "--target"), domains, "--target", 0.0)
               if args.target else np.ones(len(domains)))
    low = mixing_study.per_name(assignments(args.min, "--min"), sources, "--min", 0.0)
    high = mixing_study.per_name(assignments(args.max, "--max"), sources, "--max", 1.0)
    if args.holdout:
        mixtures.split(args.holdout)  # an unknown name is reported before the seconds of fitting
    options = mixing_study.Options(args.bootstrap, args.confidence, args.seed, args.starts)
    study = mixing_study.analyse(mixtures, options)
    predictions = [(r, *study.predict(r)) for r in wanted]
    held = mixing_study.holdout(mixtures, tuple(args.holdout), args.starts, args.seed) if args.holdout else None
    best = mixing_study.optimum(study, weights, low, high)
    source = str(args.input)
    print(mixing_report.render(study, source, predictions, held, best))
    if args.output:
        numbers = mixing_report.to_json(study, source, predictions, held, best)
        try:
            args.output.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.output / "fit.json", json.dumps(numbers, indent=2, allow_nan=False) + "\n")
            from megallm.scaling.mixing_plots import draw_all  # deferred: matplotlib (~1 s), only for plots

            plots = draw_all(study, args.output, held, best)
        except OSError as exc:
            raise UsageError(f"cannot write to --output {args.output}: {exc.strerror or exc}") from exc
        print(f"wrote {args.output / 'fit.json'} and {len(plots)} plots in {args.output}")
    return 0
