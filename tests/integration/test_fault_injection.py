"""Faults injected at random moments into a 2-rank torchrun job, which is then run again each time.

Kills, in one run: SIGKILL of every process of the job at once (torchrun, ranks, loader
workers: a node that dies, `scancel -s KILL`) at a random step, in the middle of a checkpoint
save and at a random moment; SIGKILL of torchrun alone during start-up and again mid-training
(its ranks must not outlive it). Each time the job is started again with train.resume=auto. At the end,
the weights and optimizer state of the last checkpoint are bitwise those of an uninterrupted
run, and so is every step's loss. The random moments are drawn from a seed printed on failure.
The same for a mixture of three corpora whose mix changes half-way (a data stage).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, SMALL_MODEL, alive, clean_environment, descendants, logged_steps, records, run_pretrain
from tests.mixture_inputs import source_args

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")]

STEPS = 16
SCHEDULE = [*SMALL_MODEL, "model.num_layers=2", "train.seq_len=64", "train.micro_batch_size=2",
            "train.global_batch_tokens=256", f"train.steps={STEPS}", "optim.warmup_steps=2", "logging.every=1",
            "train.eval_every=0", "checkpoint.every=2", "checkpoint.keep_last=2", "data.num_workers=1",
            "train.precision=fp32"]


def start_job(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(REPO / "launch" / "pretrain.py"), *args], cwd=REPO, env=clean_environment(),
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)


def survivors(pids: set[int]) -> list[str]:
    """The command lines of those of `pids` still running."""
    lines = []
    for pid in pids:
        if alive(pid):
            try:
                lines.append(f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
            except OSError:
                pass
    return lines


def kill_everything(job: subprocess.Popen) -> None:
    """SIGKILL to the launcher and all its descendants, as close to at once as a test can: torchrun
    is stopped first, so that it starts no rank between the listing and the kill."""
    job.send_signal(signal.SIGSTOP)
    for pid in [*descendants(job.pid), job.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.wait(timeout=60)


def kill_launcher_alone(job: subprocess.Popen, grace_s: float = 120) -> set[int]:
    """SIGKILL to torchrun only; the processes that were below it, once they ended or `grace_s` passed."""
    below = descendants(job.pid)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)
    deadline = time.time() + grace_s
    while any(map(alive, below)) and time.time() < deadline:
        time.sleep(0.2)
    return below


def trained_steps(run_dir: Path) -> int:
    return len(logged_steps(run_dir))


def wait_until(condition, job: subprocess.Popen, seconds: float = 300, poll: float = 0.01) -> bool:
    """True once `condition()` holds; False if the job ended first."""
    deadline = time.time() + seconds
    while not condition():
        if job.poll() is not None:
            return False
        assert time.time() < deadline, "the job neither progressed nor ended"
        time.sleep(poll)
    return True


def saved_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Model weights and optimizer state of a (ZeRO-0) checkpoint, flattened to named tensors."""
    state = torch.load(checkpoint / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    tensors = {f"module.{k}": v for k, v in state["module"].items() if torch.is_tensor(v)}
    for index, per_param in state["optimizer"]["state"].items():
        tensors.update({f"optimizer.{index}.{k}": v for k, v in per_param.items() if torch.is_tensor(v)})
    return tensors


@pytest.mark.parametrize("data", ["corpus", "mixture"])
def test_random_kills_resume_to_the_uninterrupted_weights(data, request, tmp_path):
    seed = int(time.time())
    rng = random.Random(seed)
    if data == "corpus":
        args = [*SCHEDULE, f"data.path={request.getfixturevalue('small_corpus')}"]
    else:
        stage = f"+data.stages=[{{at_step:{STEPS // 2},weights:{{json:0.5,http:0.5}}}}]"
        args = [*SCHEDULE, *source_args(request.getfixturevalue("mixture_sources")), stage]
    run_dir, log = tmp_path / "run", tmp_path / "job.log"
    checkpoints = run_dir / "checkpoints"
    kills = []

    # 1. every process of the job, at a random step
    job = start_job([*args, f"run_dir={run_dir}"], log)
    at = rng.randint(3, 6)
    assert wait_until(lambda: trained_steps(run_dir) >= at, job), log.read_text()[-3000:]
    kill_everything(job)
    kills.append(f"everything after step {trained_steps(run_dir)}")

    # 2. every process of the job, while a checkpoint is being written
    job = start_job([*args, f"run_dir={run_dir}"], log)
    in_save = wait_until(lambda: any(checkpoints.glob("*.partial")), job)
    kill_everything(job)
    assert in_save, f"the run ended before a save was caught (seed {seed}): {log.read_text()[-3000:]}"
    kills.append(f"everything mid-save of {next(checkpoints.glob('*.partial')).name}")

    # 3. every process of the job, at a random moment: start-up, a step or a save
    job = start_job([*args, f"run_dir={run_dir}"], log)
    before = trained_steps(run_dir)
    time.sleep(rng.uniform(1.0, 12.0))
    kill_everything(job)
    kills.append(f"everything at a random moment, {trained_steps(run_dir) - before} steps logged in this attempt")

    # 4. torchrun alone, at a random moment of the start-up (imports, config, rendezvous)
    job = start_job([*args, f"run_dir={run_dir}"], log)
    time.sleep(rng.uniform(0.5, 6.0))
    ranks = kill_launcher_alone(job)
    assert not survivors(ranks), f"outlived a killed torchrun (seed {seed}): {survivors(ranks)}"
    kills.append(f"torchrun alone in start-up, {len(ranks)} processes below it")

    # 5. torchrun alone mid-training: its ranks checkpoint (SIGTERM from the kernel) and exit
    job = start_job([*args, f"run_dir={run_dir}"], log)
    before = trained_steps(run_dir)
    if wait_until(lambda: trained_steps(run_dir) >= before + rng.randint(1, 2), job):
        ranks = kill_launcher_alone(job)
        assert not survivors(ranks), f"outlived a killed torchrun (seed {seed}): {survivors(ranks)}"
        kills.append(f"torchrun alone after step {trained_steps(run_dir)}")

    # to the end
    job = start_job([*args, f"run_dir={run_dir}"], log)
    assert job.wait(timeout=600) == 0, f"kills {kills} (seed {seed}): {log.read_text()[-3000:]}"
    assert not list(checkpoints.glob("*.partial")), "a crashed save's .partial folder was left behind"

    reference = tmp_path / "reference"
    result = run_pretrain([*args, f"run_dir={reference}"], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    last = f"step_{STEPS:08d}"
    got, want = saved_state(checkpoints / last), saved_state(reference / "checkpoints" / last)
    assert got.keys() == want.keys()
    # Bitwise on any CPU: both runs are 2 ranks on this machine (same threads per rank, same kernels in the
    # same order), so any difference is state that a kill or a restart lost.
    different = [name for name in want if not torch.equal(got[name], want[name])]
    assert not different, f"kills {kills} (seed {seed}): {different[:5]} differ"
    losses = {step: r["loss"] for step, r in records(run_dir, "train").items()}
    assert losses == {step: r["loss"] for step, r in records(reference, "train").items()}, f"kills {kills}"
    print(f"kills (seed {seed}): {kills}")


def test_a_rank_whose_torchrun_is_gone_stops_at_once(small_corpus, tmp_path):
    """A torchrun killed between starting a rank and the rank's parent-death request leaves it to a
    reaper (here: a shell, which has no libtorch): the rank says so and stops instead of waiting
    in init_process_group for a rendezvous that no longer exists."""
    env = clean_environment()
    env.update(TORCHELASTIC_RUN_ID="gone", RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT="1")
    began = time.time()
    result = subprocess.run(["sh", "-c", f'"{sys.executable}" launch/pretrain.py "$@"; exit $?', "sh", *SCHEDULE,
                             f"data.path={small_corpus}", f"run_dir={tmp_path / 'run'}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and time.time() - began < 60
    assert result.stderr.strip() == "megallm: error: torchrun exited before this rank started; nothing to do"
    assert not (tmp_path / "run").exists()
