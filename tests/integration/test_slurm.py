"""launch/slurm/ on a real SLURM (Debian's slurmctld + slurmd on localhost: one node, this machine's
CPUs, no GPU).

The documented commands as written: every `sbatch` line of the READMEs and the scripts' headers that
asks for no GPU and one node is accepted by SLURM (`sbatch --test-only`: a request the node cannot
meet pends forever, `Reason=PartitionConfig`), and launch/slurm/README.md's CPU line is submitted
word for word, from a folder laid out as the repository root (`launch/`, `.venv`, `logs/`, and
`data/stdlib` standing for the quickstart's corpus), with overrides added after it for a 40-step
model. Mid-run its batch shell gets USR1 (`scancel --batch --signal=USR1`, what
`--signal=B:USR1@...` sends before a time limit): it passes the signal on, the ranks checkpoint
the step they are in and exit 75, so do torchrun and srun ("exit 75" in the log), the job
requeues itself, and the requeued job resumes from that checkpoint and trains exactly the
uninterrupted run. prepare_data.sbatch with PARTS=2 runs its array and merge with the resources
given to the first sbatch. A sweep submitted with launch/sweep.py --slurm runs as a job array, one
task per WSD trunk and its branches; SIGTERM to one task's step (as preemption sends) checkpoints
its run, the task exits 75, is requeued and finishes with the uninterrupted run's losses. Skipped,
with the reason, only where SLURM cannot be installed.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch

from megallm.checkpoint.state import check_complete, read_state
from megallm.data.shards import Manifest
from tests.helpers import REPO, SMALL_MODEL, records, run_pretrain, run_tool
from tests.slurm_cluster import SlurmCluster, SlurmUnavailable

pytestmark = pytest.mark.slow

STEPS = 40
SCHEDULE = [*SMALL_MODEL, "model.num_layers=2", "train.seq_len=64", "train.micro_batch_size=2",
            "train.global_batch_tokens=256", f"train.steps={STEPS}", "optim.warmup_steps=2", "logging.every=1",
            "train.eval_every=0", "checkpoint.every=0", "data.num_workers=1", "train.precision=fp32"]
SLURM_DIR = REPO / "launch" / "slurm"
DOCUMENTS = [REPO / "README.md", SLURM_DIR / "README.md", *sorted(SLURM_DIR.glob("*.sbatch"))]
# a command line: optional VARIABLE=value words, then sbatch and a script of launch/slurm/
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*sbatch\s.*launch/slurm/\S+\.sbatch")
UNSATISFIABLE = ("PartitionConfig", "BadConstraints", "PartitionNodeLimit")


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


def documented_commands() -> list[tuple[str, str]]:
    """(document, command) for every sbatch command line of the documents: indented or fenced
    lines, lines of a script's header comment (`#   ...`) and inline `code`, `\\` continuations joined."""
    found = []
    for document in DOCUMENTS:
        lines = [re.sub(r"^#\s?", "", line) if document.suffix == ".sbatch" else line
                 for line in document.read_text().splitlines()]
        for number, line in enumerate(lines):
            candidates = [line.strip(), *re.findall(r"`([^`]*sbatch [^`]*)`", line)]
            for text in candidates:
                if not COMMAND.match(text):
                    continue
                following = number
                while text.endswith("\\"):
                    following += 1
                    text = text[:-1] + " " + lines[following].strip()
                found.append((str(document.relative_to(REPO)), text))
    return found


def split_command(text: str) -> tuple[dict, list[str]]:
    """(the VARIABLE=value words before sbatch, sbatch's words), a trailing `# comment` dropped."""
    words = shlex.split(text, comments=True)
    env = {}
    while "=" in words[0] and words[0] != "sbatch":
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


def for_another_cluster(words: list[str]) -> bool:
    """A command asking for GPUs, a named partition or several nodes: not for a one-node CPU cluster."""
    options = " ".join(words[:next(i for i, w in enumerate(words) if w.endswith(".sbatch"))])
    nodes = re.search(r"(?:--nodes[= ]|-N ?)(\d+)", options)
    named_partition = re.search(r"--partition|(?:^| )-p( |$)", options)
    return bool(re.search(r"--gpus|--gres", options) or named_partition) or (nodes is not None and int(nodes[1]) > 1)


def test_every_documented_cpu_command_fits_one_cpu_node(cluster):
    """What the README's CPU command hit: `#SBATCH --cpus-per-task=64`, never overridden, pended forever."""
    commands = documented_commands()
    assert any("NPROC_PER_NODE=" in c and "pretrain.sbatch" in c for _, c in commands), commands
    assert any("prepare_data.sbatch" in c for _, c in commands), commands
    refused = []
    for document, text in commands:
        env, words = split_command(text)
        if for_another_cluster(words):
            continue
        result = subprocess.run([words[0], "--test-only", *words[1:]], cwd=REPO, env={**cluster.env, **env},
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            refused.append(f"{document}: {text}\n    {result.stderr.strip()}")
    assert not refused, "SLURM refuses, on one node with no GPU:\n" + "\n".join(refused)


def repository_root(folder: Path, corpus: Path) -> Path:
    """A folder that is, to a job submitted from it, the repository root: the scripts, the test's
    environment as .venv, logs/ (the README's `mkdir -p logs`) and data/stdlib, the given corpus."""
    folder.mkdir()
    (folder / "launch").symlink_to(REPO / "launch")
    if (Path(sys.prefix) / "bin" / "activate").is_file():
        (folder / ".venv").symlink_to(sys.prefix)
    (folder / "logs").mkdir()
    (folder / "data").mkdir()
    (folder / "data" / "stdlib").symlink_to(corpus)
    return folder


def test_the_readme_cpu_line_checkpoints_on_usr1_exits_75_requeues_and_resumes_exactly(cluster, small_corpus,
                                                                                          tmp_path):
    readme = [c for d, c in documented_commands()
              if d == "launch/slurm/README.md" and "NPROC_PER_NODE=" in c and "pretrain.sbatch" in c]
    assert len(readme) == 1, readme  # its CPU line
    env, words = split_command(readme[0])
    assert "data.path=data/stdlib" in words
    root = repository_root(tmp_path / "root", small_corpus)
    shorter = [o for o in SCHEDULE if not o.startswith("+model=")]  # a 40-step model, after the README's line
    # The submitting shell has a MASTER_PORT on which a process serves a store, as the full suite's had (an
    # in-process world of this pytest): sbatch passes it on, and torchrun joins that store on every attempt.
    shells_store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True)
    submitted = cluster.run(*words, *shorter, cwd=root, extra_env={**env, "MASTER_PORT": str(shells_store.port)})
    job = re.fullmatch(r"Submitted batch job (\d+)", submitted)[1]
    run_dir = root / dict(w.split("=", 1) for w in words if w.startswith("run_dir="))["run_dir"]
    log = root / "logs" / f"megallm-pretrain-{job}.out"

    def trained(steps: int) -> bool:
        reason = cluster.run("squeue", "-h", "-j", job, "-o", "%T %r")
        assert not any(r in reason for r in UNSATISFIABLE), f"job {job} cannot start: {reason}"
        return (run_dir / "metrics.jsonl").is_file() and len(records(run_dir, "train")) >= steps

    wait_for(lambda: trained(2), 300, f"job {job} to train (log: {log})")
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    wait_for(lambda: cluster.job_state(job) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 600,
             f"job {job} to be requeued and finish")
    output = log.read_text()
    assert cluster.job_state(job) == "COMPLETED", output[-3000:]
    # the first attempt: the signal reached the ranks, which saved the step they were in and exited 75,
    # and so did torchrun and srun: the job is requeued by its exit code
    saved = [p for p in (run_dir / "checkpoints").iterdir() if p.name != f"step_{STEPS:08d}"]
    assert len(saved) == 1, output[-3000:]
    stopped_at = read_state(saved[0]).step
    check_complete(saved[0], read_state(saved[0]))
    assert 2 <= stopped_at < STEPS and f"stopped after step {stopped_at}" in output
    assert "USR1: asking the ranks" in output and f"job {job} stopped with a checkpoint (exit 75): requeueing" in output
    assert "Traceback" not in output, output[-3000:]
    # the second attempt (same job, log appended): resumed from it and trained to the end
    assert "(attempt 2)" in output and f"resumed from {saved[0].relative_to(root)} at step {stopped_at}" in output
    assert "Restarts=1" in cluster.run("scontrol", "show", "job", job)
    del shells_store

    reference = tmp_path / "reference"
    result = run_pretrain([*words[words.index("+model=tiny"):], *shorter, f"data.path={small_corpus}",
                           f"run_dir={reference}"], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = {step: r["loss"] for step, r in records(run_dir, "train").items()}
    # Bitwise, all 40 steps: the job's 2 ranks see this machine's cores as the reference's do (TaskPlugin=task/none
    # binds nothing), so they take the same threads and run the same kernels in the same order.
    assert losses == {step: r["loss"] for step, r in records(reference, "train").items()}


def test_prepare_in_parts_keeps_the_submitters_resources(cluster, tmp_path):
    """The options given to the first sbatch (here a memory and a time limit) reach the parts and the merge."""
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
        assert not any(r in queue for r in UNSATISFIABLE), f"a job asks for more than the node has: {queue}"
        return queue == ""

    wait_for(finished, 300, "the parts and the merge")
    assert (corpus / "manifest.json").is_file(), logged()[-3000:]
    manifest = Manifest.load(corpus)
    units = {int(s.path.split("-")[1][1:]) for shards in manifest.splits.values() for s in shards}
    assert {unit % 2 for unit in units} == {0, 1}  # shards of both parts' work units
    assert run_tool("validate_data", corpus).returncode == 0
    names = {p.name for p in logs.iterdir()}
    assert {f"megallm-prepare-{array}_0.out", f"megallm-prepare-{array}_1.out", f"megallm-prepare-{merge}.out"} <= names
    for job in (f"{array}_0", f"{array}_1", merge):
        shown = cluster.run("scontrol", "show", "job", job)
        assert "TimeLimit=00:15:00" in shown and ("mem=2G" in shown or "MinMemoryNode=2G" in shown), shown


def test_a_sweep_array_task_stopped_by_sigterm_checkpoints_requeues_and_resumes(cluster, small_corpus, tmp_path):
    """`launch/sweep.py --slurm`: one array task per model size, each training its WSD trunk and then
    the cool-down branched from it. The submitting shell's launcher variables (a MASTER_PORT in a
    user's profile) reach both tasks on this one node and must not make their runs share a port.
    SIGTERM to task 0's step while its trunk trains (as preemption sends): the run checkpoints and
    says where it stopped, the sweep exits 75, the task is requeued, resumes the trunk and ends with
    the losses of the same trunk trained without a stop."""
    sweep_dir = tmp_path / "sweep"
    args = [*SCHEDULE, "optim.schedule=wsd", "optim.decay_fraction=0.25", "train.eval_every=100",
            "train.eval_batches=2", "model.hidden_size=32,64", "train.steps=8,40", f"data.path={small_corpus}",
            f"run_dir={sweep_dir}"]
    args = [a for a in args if a != f"train.steps={STEPS}"]
    submitted = cluster.run(sys.executable, str(REPO / "launch" / "sweep.py"), *args, "--slurm",
                            "--sbatch=--time=15", "--sbatch=--mem=4G", cwd=REPO,
                            extra_env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531", "RANK": "0",
                                       "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
    array = re.search(r"submitted job array (\d+) \(2 tasks\)", submitted)
    assert array, submitted
    array = array.group(1)
    trunk = sweep_dir / "model.hidden_size=32,train.steps=40"
    first_log = sweep_dir / f"slurm-{array}_0.out"

    def trunk_trains() -> bool:
        steps = len(records(trunk, "train")) if (trunk / "metrics.jsonl").is_file() else 0
        assert steps < 40, f"the trunk finished before it was stopped: {first_log.read_text()[-3000:]}"
        return steps >= 3

    wait_for(trunk_trains, 300, f"task {array}_0's trunk to train")
    cluster.run("scancel", "--signal=TERM", f"{array}_0")  # to the task's step: the sweep, its run's processes
    wait_for(lambda: cluster.run("squeue", "-h", "-j", array) == "", 600, f"job array {array}")
    logs = "\n".join(p.read_text() for p in sorted(sweep_dir.glob("slurm-*.out")))
    assert len(list(sweep_dir.glob("slurm-*.out"))) == 2, logs[-3000:]
    for width in (32, 64):
        trunk_dir, branch = (sweep_dir / f"model.hidden_size={width},train.steps={steps}" for steps in (40, 8))
        assert max(records(trunk_dir, "train")) == 40 and sorted(records(branch, "train")) == [7, 8], logs[-3000:]
        assert 8 in records(branch, "eval")

    output = first_log.read_text()
    stopped = re.findall(r"stopped after step (\d+)", output)
    assert len(stopped) == 1 and f"stopped after step {stopped[0]}" in (trunk / "train.log").read_text(), output[-3000:]
    saved = trunk / "checkpoints" / f"step_{int(stopped[0]):08d}"
    check_complete(saved, read_state(saved))
    assert "stopped by SIGTERM (exit code 75)" in output and "(exit 75): requeueing" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "(attempt 2)" in output and f"resuming from its newest checkpoint, {saved.name}" in output
    assert "Restarts=1" in cluster.run("scontrol", "show", "job", f"{array}_0")

    planned = next(r for r in json.loads((sweep_dir / "sweep.json").read_text())["runs"] if r["run_dir"] == str(trunk))
    reference = tmp_path / "reference"
    result = run_pretrain([*(o for o in planned["overrides"] if not o.startswith("run_dir=")),
                           f"run_dir={reference}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert {s: r["loss"] for s, r in records(trunk, "train").items()} == \
        {s: r["loss"] for s, r in records(reference, "train").items()}  # bitwise, all 40 steps
