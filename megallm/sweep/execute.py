"""Running a planned sweep: here, one run after another, or as a SLURM job array.

Each run is `launch/pretrain.py` with its overrides, as a user would start it (plain python for
one process, torchrun for several: megallm.parallel.torchrun, which passes stop signals and the
ranks' exit code on), its output shown and kept in `<run>/train.log`. A run that finished (its
last step logged) is skipped, so the same command continues an interrupted sweep; a run that
was interrupted resumes from its own newest checkpoint (train.resume=auto), a branch not yet
started from its trunk's checkpoint. A failed trunk skips its branches; the other runs go on,
and the sweep exits 1 naming the failures.

Preemption, as for a single run: SIGTERM or SIGUSR1 to the sweep is passed on to the run in
progress, which checkpoints the step it is in and exits 75; the sweep then starts no other run
and exits 75 (EX_TEMPFAIL) itself, so that the same command, or a requeued SLURM array task
(launch/slurm/preemption.sh), resumes where it stopped.
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
from megallm.parallel.lifetime import LAUNCHER_VARIABLES
from megallm.run_layout import METRICS_FILE
from megallm.sweep.plan import PLAN_FILE, PlannedRun, SweepPlan, quoted

PRETRAIN = Path(__file__).resolve().parents[2] / "launch" / "pretrain.py"
PREEMPTION_SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "slurm" / "preemption.sh"
LOG_FILE = "train.log"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# What a run stopped by a signal exits with after its checkpoint, and so the sweep (os.EX_TEMPFAIL is
# megallm.train.callbacks.PREEMPTED_EXIT_CODE, not imported: the training stack takes seconds to import).
PREEMPTED_EXIT_CODE = os.EX_TEMPFAIL


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
    return [sys.executable, "-m", "megallm.parallel.torchrun", "--standalone", f"--nproc_per_node={nproc}",
            str(PRETRAIN), *overrides]


def origin(run: PlannedRun) -> str:
    """Where the run starts: its own newest checkpoint (a rerun resumes), its trunk's, or step 0."""
    saved = complete_checkpoints(run.checkpoints)
    if saved:
        return f"resuming from its newest checkpoint, {saved[-1].name}"
    if run.branch_of:
        return f"branched at step {run.branch_step} of {run.branch_of}"
    return "from scratch"


class StopSignal:
    """The stop signal the sweep received (0: none), passed on to the run in progress."""

    def __init__(self):
        self.signum = 0
        self.run: Optional[subprocess.Popen] = None

    def receive(self, signum, _frame) -> None:
        self.signum = signum
        self.pass_on()

    def pass_on(self) -> None:
        if self.signum and self.run is not None and self.run.poll() is None:
            self.run.send_signal(self.signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def run_sweep(plan: SweepPlan, nproc: int = 1, groups: Optional[list[int]] = None) -> int:
    """Train the plan's runs (those of `groups` only, if given) in order; 0 if all finished, 1 if any
    failed, PREEMPTED_EXIT_CODE if a stop signal ended the sweep with runs left to resume."""
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    (plan.sweep_dir / PLAN_FILE).write_text(plan.to_json())
    runs = [run for run in plan.runs if groups is None or run.group in groups]
    stop = StopSignal()
    previous = {sig: signal.signal(sig, stop.receive) for sig in STOP_SIGNALS}
    try:
        return _run_all(runs, plan.sweep_dir, nproc, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_all(runs: list[PlannedRun], sweep_dir: Path, nproc: int, stop: StopSignal) -> int:
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
        if stop.signum:
            break
        print(f"{head}: {run.steps} steps, {origin(run)}", flush=True)
        code, seconds = _train(command(run, nproc), run.run_dir, stop)
        if stop.signum and _stopped_by(code, stop.signum):
            print(f"{head}: stopped by {stop.name} (exit code {code}) in {seconds / 60:.1f} min", flush=True)
            continue  # no other run starts
        if code != 0:
            failed[run.name] = f"exit code {code}, see {run.run_dir / LOG_FILE}"
        status = f"failed ({failed[run.name]})" if code else "done"
        print(f"{head}: {status} in {seconds / 60:.1f} min (sweep {(time.time() - started) / 60:.1f} min)", flush=True)
    if failed:
        print(f"sweep: {len(failed)} of {len(runs)} runs did not finish: "
              + "; ".join(f"{name}: {why}" for name, why in failed.items()), file=sys.stderr, flush=True)
        return 1
    left = [run.name for run in runs if last_logged_step(run.run_dir) < run.steps]
    if stop.signum and left:
        print(f"sweep: stopped by {stop.name} with {len(left)} of {len(runs)} runs to go (exit code "
              f"{PREEMPTED_EXIT_CODE}); the same command resumes them", flush=True)
        return PREEMPTED_EXIT_CODE
    print(f"sweep: {len(runs)} runs finished in {sweep_dir} ({(time.time() - started) / 60:.1f} min)", flush=True)
    return 0


def _stopped_by(code: int, signum: int) -> bool:
    """A run's exit after stop signal `signum` that leaves it resumable: its checkpoint saved (75), or
    ended by the signal itself before its first step, with nothing to save yet (-signum from python,
    128 + signum from megallm.parallel.torchrun)."""
    return code in (PREEMPTED_EXIT_CODE, -signum, 128 + signum)


def _train(cmd: list[str], run_dir: Path, stop: StopSignal) -> tuple[int, float]:
    """Run `cmd`, its output shown and appended to the run's log, stop signals passed on to it;
    (exit code, seconds)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(run_dir / LOG_FILE, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        # Each run is a world of its own: a MASTER_PORT or RANK inherited from the submitting shell would
        # make runs started side by side (SLURM array tasks on one node) rendezvous on one port.
        env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}
        stop.run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    env=env)
        stop.pass_on()  # a signal that came while it started
        assert stop.run.stdout is not None  # stdout=PIPE
        try:
            for line in stop.run.stdout:  # to its end: the run's last lines say where it stopped
                sys.stdout.write(line)
                log.write(line)
        except KeyboardInterrupt:  # Ctrl-C: the run saves a checkpoint on SIGTERM, then the sweep ends
            stop.run.terminate()
            stop.run.wait()
            raise
        code = stop.run.wait()
        stop.run = None
        return code, time.time() - start


def slurm_script(plan: SweepPlan, sweep_args: list[str], nproc: int, sbatch_options: list[str]) -> str:
    """An sbatch script whose array tasks each train one group (a trunk and its branches) with this
    same sweep command, under pretrain.sbatch's preemption contract (launch/slurm/preemption.sh);
    `sbatch_options` are extra `#SBATCH` lines' contents (e.g. --partition=gpu)."""
    groups = len(plan.groups)
    sweep = Path(__file__).resolve().parents[2] / "launch" / "sweep.py"
    lines = ["#!/bin/bash", f"#SBATCH --job-name=sweep-{plan.sweep_dir.name}", f"#SBATCH --array=0-{groups - 1}",
             "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={max(1, nproc)}",
             "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300", "#SBATCH --open-mode=append",
             f"#SBATCH --output={plan.sweep_dir.resolve()}/slurm-%A_%a.out",
             *(f"#SBATCH {option}" for option in sbatch_options),
             "# One array task per group of runs (a WSD trunk and its cool-down branches), generated by",
             "# launch/sweep.py --slurm; rerunning a task skips finished runs and resumes interrupted ones.",
             "# USR1 before the time limit, or SIGTERM: the run in progress checkpoints, the sweep exits 75",
             "# and the task is requeued (launch/slurm/preemption.sh); the log is appended to.",
             "set -euo pipefail", f"cd {shlex.quote(str(Path.cwd()))}",
             f"source {shlex.quote(str(PREEMPTION_SCRIPT))}",
             'echo "job $SLURM_JOB_ID, array task $SLURM_ARRAY_TASK_ID (attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 )))"',
             f"run_preemptible srun --cpus-per-task=\"${{SLURM_CPUS_PER_TASK:-1}}\" {shlex.quote(sys.executable)} "
             f"{shlex.quote(str(sweep))} {shlex.join(sweep_args)} --nproc {nproc} --group \"$SLURM_ARRAY_TASK_ID\""]
    return "\n".join(lines) + "\n"
