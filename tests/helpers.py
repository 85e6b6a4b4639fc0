"""Helpers shared by the tests: launching training runs, reading what they wrote, one-line
errors, small models and tokenizers.

Two ways to launch `launch/pretrain.py`:
- `run_pretrain`: as users do, `python` for one process and `torchrun` for several (each
  rank imports torch, megatron-core and DeepSpeed itself: ~6 s of CPU per rank);
- `train`: the same `main` on N gloo ranks started by megallm.parallel.local_world, forked
  from a server that imported those libraries once. Most multi-rank tests use it; the
  launcher tests use `run_pretrain`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from megallm.parallel.lifetime import LAUNCHER_VARIABLES

REPO = Path(__file__).resolve().parent.parent
# A few stdlib packages: enough text to train a 512-token BPE and a few hundred steps.
CORPUS_PACKAGES = ("json", "email", "http", "logging")
# A small Llama: GQA with 2 query heads per key/value head.
SMALL_MODEL = ["+model=tiny", "model.hidden_size=64", "model.num_heads=4", "model.num_kv_heads=2",
               "model.ffn_hidden_size=128"]


# ---- launching -----------------------------------------------------------------------------------
@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str


def clean_environment() -> dict:
    """This process's environment without the rendezvous variables a world of one may have set."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return env


def run_pretrain(args: list[str], nproc: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run launch/pretrain.py as users do: plain python for one process, torchrun for several."""
    if nproc == 1:
        cmd = [sys.executable, str(REPO / "launch" / "pretrain.py"), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(REPO / "launch" / "pretrain.py"), *args]
    return subprocess.run(cmd, cwd=REPO, env=clean_environment(), capture_output=True, text=True, timeout=timeout)


def run_tool(tool: str, *args: Any, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python tools/<tool>.py ARGS` as a user does."""
    return subprocess.run([sys.executable, str(REPO / "tools" / f"{tool}.py"), *map(str, args)], cwd=REPO,
                          env=clean_environment(), capture_output=True, text=True, timeout=timeout)


def run_ranks(world: int, fn: Callable[..., Any], *args: Any, timeout: float = 600) -> list[Any]:
    """`fn(*args)` (a module-level function) on `world` gloo ranks; their return values in rank order.
    A failure shows each rank's stderr."""
    from megallm.errors import WorldError
    from megallm.parallel.local_world import run_local_world

    with tempfile.TemporaryDirectory(prefix="megallm-test-world-") as logs:
        try:
            return run_local_world(world, fn, *args, logs=Path(logs), timeout=timeout)
        except WorldError as exc:
            errors = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(Path(logs).glob("*.err")))
            raise AssertionError(f"{exc}\n{errors}") from None


def train(args: list[str], nproc: int = 1, timeout: float = 600, entry: Callable[[list[str]], int] = None) -> RunResult:
    """launch/pretrain.py's `main(args)` (or `entry(args)`, a module-level function that calls it) on
    `nproc` ranks (see the module docstring): its exit code (the first non-zero over ranks) and the
    ranks' stdout and stderr, rank after rank."""
    from megallm.cli.pretrain import main
    from megallm.errors import WorldError
    from megallm.parallel.local_world import run_local_world

    with tempfile.TemporaryDirectory(prefix="megallm-test-run-") as logs:
        try:
            codes = run_local_world(nproc, entry or main, list(args), logs=Path(logs), timeout=timeout)
        except WorldError as exc:  # a crash, not an exit code
            codes = [f"crashed: {exc}"]
        out = "".join(p.read_text() for p in sorted(Path(logs).glob("*.out")))
        err = "".join(p.read_text() for p in sorted(Path(logs).glob("*.err")))
    if not all(isinstance(code, int) for code in codes):
        raise AssertionError(f"{codes}\n{err[-3000:]}")
    return RunResult(next((c for c in codes if c), 0), out, err)


# ---- what runs wrote -------------------------------------------------------------------------------
def records(run_dir: Path, kind: str) -> dict[int, dict]:
    """The metrics.jsonl records of `kind` ("train", "eval") by step."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r["kind"] == kind}


def traced_steps(run_dir: Path) -> dict[int, list[tuple[int, str]]]:
    """A run's data.trace_samples: step -> [(global sample, token-id hash)] over all data-parallel ranks, by sample."""
    steps: dict[int, list] = {}
    for path in sorted((run_dir / "samples").glob("dp_rank_*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            steps.setdefault(record["step"], []).extend(zip(record["samples"], record["tokens_sha1"]))
    return {step: sorted(rows) for step, rows in steps.items()}


def logged_steps(run_dir: Path) -> set[int]:
    """The train steps a running job has logged so far (none while metrics.jsonl is missing, or
    while its last line is half written)."""
    try:
        return set(records(run_dir, "train"))
    except (FileNotFoundError, ValueError):
        return set()


def descendants(pid: int) -> set[int]:
    """Every living process below `pid` (torchrun's ranks sit in sessions of their own, so not its group)."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except (FileNotFoundError, ProcessLookupError):  # the thread or process ended while listed
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def assert_one_line_error(result, *phrases: str, prefix: str = "megallm: error: ", returncode: int = 2) -> str:
    """`result` (anything with returncode and stderr) failed with exactly one line holding `phrases`."""
    assert result.returncode == returncode, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(prefix), lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def run_main(main: Callable[[list[str]], int], argv: list[str], capsys) -> RunResult:
    """A command line's `main` called in this process, with what it printed."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return RunResult(code, captured.out, captured.err)


# ---- small inputs ----------------------------------------------------------------------------------
def stdlib_subset() -> list[Path]:
    from megallm.data.plan import python_stdlib_files

    return [p for p in python_stdlib_files() if any(f"/{pkg}/" in str(p) for pkg in CORPUS_PACKAGES)]


def short_stdlib_modules() -> list[Path]:
    """The standard library's modules under 400 bytes (~60 tokens each; not empty: that is an input error)."""
    from megallm.data.plan import python_stdlib_files

    return [p for p in python_stdlib_files() if 0 < p.stat().st_size < 400]


def tiny_tokenizer(path: Path):
    """A 300-token BPE (with <|endoftext|>) trained on a line of code, saved at `path`."""
    from megallm.data.tokenizer import train_bpe

    tok = train_bpe(["def export(model):\n    return model.weights  # a tiny corpus\n" * 30], vocab_size=300)
    tok.save(str(path))
    return tok


def random_model(cfg, seed: int):
    """A randomly initialised model whose norm weights are not all ones (untrained ones would hide mistakes)."""
    from megallm.model.llama import build_model

    model = build_model(cfg, seed=seed).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def canonical_weights(model, cfg) -> dict[str, torch.Tensor]:
    """A single-process model's weights in canonical form (vocabulary rows trimmed)."""
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    for name in ("embedding.weight", "output.weight"):
        if name in weights:
            weights[name] = weights[name][: cfg.vocab_size]
    return weights
