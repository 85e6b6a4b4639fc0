"""launch/slurm/ on a real SLURM (Debian's slurmctld + slurmd on localhost, no GPUs).

The script is submitted unchanged for a 2-rank CPU run; mid-run the batch shell gets USR1
(`scancel --batch --signal=USR1`, what `--signal=B:USR1@...` sends before a time limit). It
must pass the signal on, the ranks checkpoint the step they are in and exit 75, the job
requeues itself, and the requeued job resumes from that checkpoint and trains exactly the
uninterrupted run. prepare_data.sbatch with PARTS=2 runs its array and merge with the
resources given to the first sbatch. A sweep submitted with launch/sweep.py --slurm runs as a job
array, one task per WSD trunk and its branches. Skipped, with the reason, only where SLURM cannot be installed.
"""

from __future__ import annotations

import re
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from megallm.checkpoint.state import check_complete, read_state
from megallm.data.shards import Manifest
from tests.helpers import REPO, SMALL_MODEL, records, run_pretrain, run_tool
from tests.slurm_cluster import SlurmCluster, SlurmUnavailable

pytestmark = pytest.mark.slow

STEPS = 40
SCHEDULE = [*SMALL_MODEL, "model.num_layers=2", "train.seq_len=64", "train.micro_batch_size=2",
            "train.global_batch_tokens=256", f"train.steps={STEPS}", "optim.warmup_steps=2", "logging.every=1",
            "train.eval_every=0", "checkpoint.every=0", "data.num_workers=1", "train.precision=fp32"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        cluster = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))
    yield cluster
    cluster.stop()


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_usr1_checkpoints_requeues_and_resumes_exactly(cluster, small_corpus, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = cluster.run("sbatch", "--parsable", "--nodes=1", f"--cpus-per-task={2}", "--time=20",
                      f"--output={log}", str(REPO / "launch" / "slurm" / "pretrain.sbatch"),
                      *SCHEDULE, f"data.path={small_corpus}", f"run_dir={run_dir}",
                      cwd=REPO, extra_env={"NPROC_PER_NODE": "2"}).split(";")[0]
    wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and len(records(run_dir, "train")) >= 2, 300,
             f"job {job} to train (log: {log})")
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    wait_for(lambda: cluster.job_state(job) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 600,
             f"job {job} to be requeued and finish")
    output = log.read_text()
    assert cluster.job_state(job) == "COMPLETED", output[-3000:]
    # the first attempt: the signal reached the ranks, which saved the step they were in
    assert "USR1: asking the ranks" in output and "requeueing" in output, output[-3000:]
    saved = [p for p in (run_dir / "checkpoints").iterdir() if p.name != f"step_{STEPS:08d}"]
    assert len(saved) == 1, output[-3000:]
    stopped_at = read_state(saved[0]).step
    check_complete(saved[0], read_state(saved[0]))
    assert 2 <= stopped_at < STEPS and f"stopped after step {stopped_at}" in output
    # the second attempt (same job, log appended): resumed from it and trained to the end
    assert "(attempt 2)" in output and f"resumed from {saved[0]}" in output
    assert "Restarts=1" in cluster.run("scontrol", "show", "job", job)

    reference = tmp_path / "reference"
    result = run_pretrain([*SCHEDULE, f"data.path={small_corpus}", f"run_dir={reference}"], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = {step: r["loss"] for step, r in records(run_dir, "train").items()}
    # Bitwise, all 40 steps: the job's 2 ranks see this machine's cores as the reference's do (TaskPlugin=task/none
    # binds nothing), so they take the same threads and run the same kernels in the same order.
    assert losses == {step: r["loss"] for step, r in records(reference, "train").items()}


def test_prepare_in_parts_keeps_the_submitters_resources(cluster, tmp_path):
    """The script's own #SBATCH lines ask for 32 CPUs and 64 GB, more than this node has: the
    parts and the merge only run if the options given on the command line reach them."""
    logs, corpus = tmp_path / "logs", tmp_path / "corpus"
    logs.mkdir()
    inputs = str(Path(sysconfig.get_paths()["stdlib"]) / "json" / "*.py")
    first = cluster.run("sbatch", "--parsable", "--cpus-per-task=1", "--mem=2G", "--time=15",
                        f"--output={logs}/%x-%j.out", str(REPO / "launch" / "slurm" / "prepare_data.sbatch"),
                        "--input", inputs, "--output", str(corpus), "--vocab-size", "300", "--shard-tokens", "5000",
                        "--val-fraction", "0.2", "--unit-mb", "0.02", cwd=REPO, extra_env={"PARTS": "2"}).split(";")[0]

    def logged() -> str:
        return "\n".join(f"{p.name}: {p.read_text()}" for p in sorted(logs.iterdir()))

    wait_for(lambda: cluster.run("squeue", "-h", "-j", first) == "", 300, f"job {first} to end")
    submitted = re.search(r"submitted parts as job array (\d+) and the merge as job (\d+)", logged())
    assert submitted, logged()[-3000:]
    array, merge = submitted.groups()
    def finished() -> bool:  # a job that asks for more than the node has pends forever (reason PartitionConfig)
        queue = cluster.run("squeue", "-h", "-j", f"{array},{merge}", "-o", "%i %T %r cpus=%C mem=%m")
        assert "PartitionConfig" not in queue, f"a job asks for more than the node has: {queue}"
        return queue == ""

    wait_for(finished, 300, "the parts and the merge")
    assert (corpus / "manifest.json").is_file(), logged()[-3000:]
    manifest = Manifest.load(corpus)
    units = {int(s.path.split("-")[1][1:]) for shards in manifest.splits.values() for s in shards}
    assert {unit % 2 for unit in units} == {0, 1}  # shards of both parts' work units
    assert run_tool("validate_data", corpus).returncode == 0
    names = {p.name for p in logs.iterdir()}
    assert {f"megallm-prepare-{array}_0.out", f"megallm-prepare-{array}_1.out", f"megallm-prepare-{merge}.out"} <= names
    assert "mem=2G" in cluster.run("scontrol", "show", "job", merge) or "MinMemoryNode=2G" in \
        cluster.run("scontrol", "show", "job", merge)


def test_a_sweep_runs_as_a_job_array_one_task_per_trunk(cluster, small_corpus, tmp_path):
    """`launch/sweep.py --slurm`: one array task per model size, each training its WSD trunk and then
    the cool-down branched from it. The submitting shell's launcher variables (a MASTER_PORT in a
    user's profile) reach both tasks on this one node and must not make their runs share a port."""
    sweep_dir = tmp_path / "sweep"
    args = [*SCHEDULE, "optim.schedule=wsd", "optim.decay_fraction=0.25", "train.eval_every=100",
            "train.eval_batches=2", "model.hidden_size=32,64", "train.steps=8,16", f"data.path={small_corpus}",
            f"run_dir={sweep_dir}"]
    args = [a for a in args if a != f"train.steps={STEPS}"]
    submitted = cluster.run(sys.executable, str(REPO / "launch" / "sweep.py"), *args, "--slurm",
                            "--sbatch=--time=15", "--sbatch=--mem=4G", cwd=REPO,
                            extra_env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531", "RANK": "0",
                                       "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
    array = re.search(r"submitted job array (\d+) \(2 tasks\)", submitted)
    assert array, submitted
    wait_for(lambda: cluster.run("squeue", "-h", "-j", array.group(1)) == "", 600, f"job array {array.group(1)}")
    logs = "\n".join(p.read_text() for p in sorted(sweep_dir.glob("slurm-*.out")))
    assert len(list(sweep_dir.glob("slurm-*.out"))) == 2, logs[-3000:]
    for width in (32, 64):
        trunk, branch = (sweep_dir / f"model.hidden_size={width},train.steps={steps}" for steps in (16, 8))
        assert max(records(trunk, "train")) == 16 and sorted(records(branch, "train")) == [7, 8], logs[-3000:]
        assert 8 in records(branch, "eval")
