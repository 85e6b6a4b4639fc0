"""`launch/sweep.py` (and `launch/pretrain.py --multirun`): a sweep in Hydra's override syntax.

    python launch/sweep.py +model=ladder_2,ladder_3 train.steps=100,200,400 optim.schedule=wsd run_dir=runs/ladder

plans every run (composed and checked first), prints the plan and its compute, then trains the
runs one after another here, or with --slurm writes and submits a SLURM job array. Exit codes: 0 all
runs finished, 1 some failed, 75 stopped by SIGTERM or SIGUSR1 with the run in progress checkpointed
(the same command resumes; a SLURM array task is requeued).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from typing import Optional

from megallm.cli import report
from megallm.errors import ConfigError, MegallmError

PROG = "megallm sweep"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="launch/sweep.py", description=__doc__.split("\n\n")[0],
        epilog="Sweep values as in Hydra's --multirun: a,b,c | range(100,400,100) | choice(a,b). run_dir is the "
               "sweep's folder (default runs/sweep); each run's folder is named from its swept values.")
    p.add_argument("overrides", nargs="*", help="launch/pretrain.py overrides, swept ones with comma lists")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its compute, train nothing")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun when more than 1)")
    p.add_argument("--no-branch", action="store_true", help="train every WSD budget from scratch")
    p.add_argument("--group", type=int, action="append", help="train only this group of runs (SLURM array task)")
    p.add_argument("--slurm", action="store_true", help="write <sweep>/sweep.sbatch, a job array, and submit it")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="an #SBATCH option for --slurm, e.g. --sbatch=--partition=gpu (repeatable)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    # deferred: Hydra and the training stack's modules, after --help and argument mistakes
    from megallm.sweep.execute import run_sweep
    from megallm.sweep.plan import plan_sweep

    try:
        if args.nproc < 1:
            raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
        plan = plan_sweep(args.overrides, world_size=args.nproc, branch=not args.no_branch)
        if args.group and not set(args.group) <= {run.group for run in plan.runs}:
            raise ConfigError(f"--group {args.group} is not among the sweep's groups 0-{len(plan.groups) - 1}")
        print(describe(plan), flush=True)
        if args.dry_run:
            return 0
        if args.slurm:
            return _submit(plan, args)
        return run_sweep(plan, nproc=args.nproc, groups=args.group)
    except MegallmError as error:
        return report(PROG, error)


def describe(plan) -> str:
    """The plan as a table, and what the WSD branches save against separate runs."""
    width = max([44, *(len(run.name) for run in plan.runs)])  # a mixture's weights make long names
    rows = [f"sweep {plan.sweep_dir}: {len(plan.runs)} runs in {len(plan.groups)} group(s)",
            f"  {'run':<{width}} {'steps':>7} {'tokens':>11} {'PFLOP':>9}  trained"]
    for run in plan.runs:
        pflop = f"{run.trained_flops / 1e15:.3f}" if run.flops is not None else "?"
        origin = f"branch at step {run.branch_step} of {run.branch_of}" if run.branch_of else "from scratch"
        if run.at_steps:
            origin += f", checkpoints at {run.at_steps}"
        rows.append(f"  {run.name:<{width}} {run.steps:>7} {run.tokens:>11,} {pflop:>9}  {origin}")
    planned, separate = plan.compute()
    if planned is not None:
        rows.append(f"compute: {planned / 1e15:.3f} PFLOP planned, {separate / 1e15:.3f} PFLOP as separate runs "
                    f"({100 * (1 - planned / separate):.0f}% saved by WSD branches)")
    return "\n".join(rows)


def _submit(plan, args) -> int:
    from megallm.sweep.execute import slurm_script  # deferred: as in main

    sweep_args = [*args.overrides, *(["--no-branch"] if args.no_branch else [])]
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    script = plan.sweep_dir / "sweep.sbatch"
    script.write_text(slurm_script(plan, sweep_args, args.nproc, args.sbatch))
    if shutil.which("sbatch") is None:
        print(f"wrote {script}; no sbatch on this machine: submit it with `sbatch {script}` on the cluster")
        return 0
    submitted = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if submitted.returncode != 0:
        raise ConfigError(f"sbatch refused {script}: {submitted.stderr.strip().splitlines()[-1:]}")
    print(f"submitted job array {submitted.stdout.strip()} ({len(plan.groups)} tasks): {script}")
    return 0
