"""Running a planned sweep: here, one run after another, or as a SLURM job array.

Each run is `launch/pretrain.py` with its overrides, as a user would start it (plain python for
one process, torchrun for several), its output shown and kept in `<run>/train.log`. A run that
finished (its last step logged) is skipped, so the same command continues an interrupted
sweep; a run that was interrupted resumes from its own newest checkpoint (train.resume=auto),
a branch not yet started from its trunk's checkpoint. A failed trunk skips its branches; the
other runs go on, and the sweep exits 1 naming the failures.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from megallm.checkpoint.state import complete_checkpoints
from megallm.files import METRICS_FILE
from megallm.parallel.lifetime import LAUNCHER_VARIABLES
from megallm.sweep.plan import PLAN_FILE, PlannedRun, SweepPlan, quoted

PRETRAIN = Path(__file__).resolve().parents[2] / "launch" / "pretrain.py"
LOG_FILE = "train.log"


def last_logged_step(run_dir: Path) -> int:
    """The last train step in the run's metrics.jsonl (0 if none; a half-written last line is ignored)."""
    step = 0
    try:
        lines = (run_dir / METRICS_FILE).read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "train":
            step = max(step, int(record.get("step", 0)))
    return step


def command(run: PlannedRun, nproc: int) -> list[str]:
    """launch/pretrain.py with the run's overrides; a branch resumes from its trunk until it has checkpoints of its own."""
    overrides = list(run.overrides)
    if run.branch_checkpoint is not None and not complete_checkpoints(run.checkpoints):
        overrides.append(f"train.resume={quoted(run.branch_checkpoint)}")
    if nproc == 1:
        return [sys.executable, str(PRETRAIN), *overrides]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(PRETRAIN), *overrides]


def run_sweep(plan: SweepPlan, nproc: int = 1, groups: Optional[list[int]] = None) -> int:
    """Train the plan's runs (those of `groups` only, if given) in order; 0 if all finished, else 1."""
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    (plan.sweep_dir / PLAN_FILE).write_text(plan.to_json())
    runs = [run for run in plan.runs if groups is None or run.group in groups]
    signal.signal(signal.SIGTERM, _interrupt)  # scancel, kill: the current run checkpoints before the sweep ends
    failed: dict[str, str] = {}
    started = time.time()
    for index, run in enumerate(runs, 1):
        head = f"[sweep {index}/{len(runs)}] {run.name}"
        if last_logged_step(run.run_dir) >= run.steps:
            print(f"{head}: finished before, skipped", flush=True)
            continue
        if run.branch_of in failed:
            failed[run.name] = f"its trunk {run.branch_of} failed"
            print(f"{head}: skipped, {failed[run.name]}", flush=True)
            continue
        origin = f"branched at step {run.branch_step} of {run.branch_of}" if run.branch_of else "from scratch"
        print(f"{head}: {run.steps} steps, {origin}", flush=True)
        code, seconds = _train(command(run, nproc), run.run_dir)
        if code != 0:
            failed[run.name] = f"exit code {code}, see {run.run_dir / LOG_FILE}"
        status = f"failed ({failed[run.name]})" if code else "done"
        print(f"{head}: {status} in {seconds / 60:.1f} min (sweep {(time.time() - started) / 60:.1f} min)", flush=True)
    if failed:
        print(f"sweep: {len(failed)} of {len(runs)} runs did not finish: "
              + "; ".join(f"{name}: {why}" for name, why in failed.items()), file=sys.stderr, flush=True)
        return 1
    print(f"sweep: {len(runs)} runs finished in {plan.sweep_dir} ({(time.time() - started) / 60:.1f} min)", flush=True)
    return 0


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _train(cmd: list[str], run_dir: Path) -> tuple[int, float]:
    """Run `cmd`, its output shown and appended to the run's log; (exit code, seconds)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(run_dir / LOG_FILE, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        # Each run is a world of its own: a MASTER_PORT or RANK inherited from the submitting shell would
        # make runs started side by side (SLURM array tasks on one node) rendezvous on one port.
        env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                   env=env)
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                log.write(line)
        except BaseException:  # Ctrl-C or SIGTERM: the run saves a checkpoint on SIGTERM, then the sweep ends
            process.terminate()
            process.wait()
            raise
        return process.wait(), time.time() - start


def slurm_script(plan: SweepPlan, sweep_args: list[str], nproc: int, sbatch_options: list[str]) -> str:
    """An sbatch script whose array tasks each train one group (a trunk and its branches) with this
    same sweep command; `sbatch_options` are extra `#SBATCH` lines' contents (e.g. --partition=gpu)."""
    groups = len(plan.groups)
    sweep = Path(__file__).resolve().parents[2] / "launch" / "sweep.py"
    lines = ["#!/bin/bash", f"#SBATCH --job-name=sweep-{plan.sweep_dir.name}", f"#SBATCH --array=0-{groups - 1}",
             "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={max(1, nproc)}",
             f"#SBATCH --output={plan.sweep_dir.resolve()}/slurm-%A_%a.out",
             *(f"#SBATCH {option}" for option in sbatch_options),
             "# One array task per group of runs (a WSD trunk and its cool-down branches), generated by",
             "# launch/sweep.py --slurm; rerunning a task skips finished runs and resumes interrupted ones.",
             "set -euo pipefail", f"cd {shlex.quote(str(Path.cwd()))}",
             f"exec {shlex.quote(sys.executable)} {shlex.quote(str(sweep))} {shlex.join(sweep_args)} "
             f"--nproc {nproc} --group \"$SLURM_ARRAY_TASK_ID\""]
    return "\n".join(lines) + "\n"
