"""The preemption contract of the SLURM scripts without a cluster: launch/slurm/preemption.sh (shared by
pretrain.sbatch and the sweep's array script) with scancel and scontrol replaced by stubs that log
their arguments, torchrun under megallm.parallel.torchrun (what both run) passing a stop signal and
its ranks' 75 on, and the array script that launch/sweep.py --slurm writes. The real cluster runs
them in tests/integration/test_slurm.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megallm.parallel.lifetime import LAUNCHER_VARIABLES
from megallm.sweep.execute import PREEMPTED_EXIT_CODE, PREEMPTION_SCRIPT, slurm_script
from megallm.sweep.plan import plan_sweep

PLAN = ["+model=ladder_2", "train.steps=100,200", "optim.schedule=wsd", "train.seq_len=64",
        "train.global_batch_tokens=512", "train.micro_batch_size=8", "optim.warmup_steps=5", "model.vocab_size=512"]

# A job step: writes its pid, then exits 75 `delay` seconds after a stop signal (its checkpoint), or `code` at once.
STEP = """
import os, signal, sys, time
stopped = []
for sig in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(sig, lambda s, f: stopped.append(s))
open(sys.argv[1], "w").write(str(os.getpid()))
while not stopped and int(sys.argv[2]) < 0:
    time.sleep(0.05)
time.sleep(float(sys.argv[3]) if stopped else 0)
sys.exit(75 if stopped else int(sys.argv[2]))
"""


def batch_shell(tmp_path: Path, code: int, delay: float = 0) -> tuple[subprocess.Popen, Path, Path]:
    """A batch shell running one step under run_preemptible; scancel passes its signal to the step as
    SLURM does (and returns when the step has ended, or after a second); both stubs log to `calls`."""
    bin_dir, calls, step_pid = tmp_path / "bin", tmp_path / "calls", tmp_path / "step.pid"
    bin_dir.mkdir()
    (bin_dir / "scancel").write_text(f'#!/bin/bash\necho "scancel $*" >> {calls}\nstep=$(cat {step_pid})\n'
                                     f'kill -s "${{1#--signal=}}" "$step"\n'
                                     f'for i in $(seq 100); do kill -0 "$step" 2>/dev/null || break; sleep 0.01; '
                                     'done\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "scontrol $*" >> {calls}\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    (tmp_path / "step.py").write_text(STEP)
    script = (f"set -euo pipefail\nsource {PREEMPTION_SCRIPT}\n"
              f"run_preemptible {sys.executable} {tmp_path / 'step.py'} {step_pid} {code} {delay}\n")
    shell = subprocess.Popen(["bash", "-c", script], env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                                                          "SLURM_JOB_ID": "7"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return shell, calls, step_pid


@pytest.mark.parametrize("sig, delay", [(signal.SIGUSR1, 0), (signal.SIGUSR1, 1), (signal.SIGTERM, 0)])
def test_a_signal_to_the_batch_shell_reaches_the_step_and_its_75_requeues_the_job(tmp_path, sig, delay):
    """The step ends while the trap runs (delay 0) or after it (a checkpoint that takes a while)."""
    shell, calls, step_pid = batch_shell(tmp_path, code=-1, delay=delay)
    deadline = time.time() + 60
    while not step_pid.is_file() or not step_pid.read_text():
        assert time.time() < deadline and shell.poll() is None, shell.communicate()[0]
        time.sleep(0.05)
    shell.send_signal(sig)  # what --signal=B:USR1@300 or scancel --batch sends
    out, _ = shell.communicate(timeout=60)
    name = signal.Signals(sig).name.removeprefix("SIG")
    # the wait the trap cut short (exit 128 + signal) is not the step's exit code
    assert shell.returncode == PREEMPTED_EXIT_CODE, out
    assert f"{name}: asking the ranks of job 7 to checkpoint and stop" in out
    assert "job 7 stopped with a checkpoint (exit 75): requeueing" in out
    assert calls.read_text().splitlines() == [f"scancel --signal={name} 7", "scontrol requeue 7"]


def test_any_other_exit_code_ends_the_job_with_it_not_requeued(tmp_path):
    shell, calls, _ = batch_shell(tmp_path, code=3)
    out, _ = shell.communicate(timeout=60)
    assert shell.returncode == 3 and "requeueing" not in out and not calls.exists(), out


# A rank: on a stop signal, rank 0 exits 75 at once (its checkpoint saved); rank 1 takes 3 s more with the
# signal's default action back (a rank past its checkpoint), so torchrun's SIGTERM, once rank 0 has exited, ends it.
RANK = """
import os, signal, sys, time
stopped = []
for sig in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(sig, lambda s, f: stopped.append(s))
open(os.path.join(sys.argv[1], os.environ["RANK"]), "w").close()
while not stopped:
    time.sleep(0.05)
if os.environ["RANK"] == "1":
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(3)
sys.exit(75)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_torchrun_passes_a_stop_signal_and_the_first_ranks_exit_code_on(tmp_path, sig):
    """Plain torchrun dies of SIGUSR1 (138) and exits 1 after SIGTERM, whatever its ranks did."""
    (tmp_path / "rank.py").write_text(RANK)
    ready = tmp_path / "ready"
    ready.mkdir()
    launcher = subprocess.Popen([sys.executable, "-m", "megallm.parallel.torchrun", "--standalone",
                                 "--nproc_per_node=2", str(tmp_path / "rank.py"), str(ready)],
                                env={k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while len(list(ready.iterdir())) < 2:
        assert time.time() < deadline and launcher.poll() is None, launcher.communicate()[0]
        time.sleep(0.05)
    launcher.send_signal(sig)
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == PREEMPTED_EXIT_CODE, out
    assert "torchrun: exit codes by rank: 0: 75 (first), 1: 143" in out


def test_the_array_script_keeps_the_preemption_contract(tmp_path):
    plan = plan_sweep([*PLAN, f"run_dir={tmp_path}"])
    script = slurm_script(plan, PLAN, nproc=2, sbatch_options=["--time=60"])
    lines = script.splitlines()
    assert {"#SBATCH --requeue", "#SBATCH --signal=B:USR1@300", "#SBATCH --open-mode=append", "#SBATCH --time=60",
            "#SBATCH --array=0-0", "#SBATCH --cpus-per-task=2"} <= set(lines)
    assert f"source {PREEMPTION_SCRIPT}" in lines
    assert lines[-1].startswith("run_preemptible srun ")
    assert lines[-1].endswith('--nproc 2 --group "$SLURM_ARRAY_TASK_ID"')
    (tmp_path / "sweep.sbatch").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "sweep.sbatch")]).returncode == 0
