"""What the benchmark scripts share: the corpus, launching megallm, and where a figure was measured.

Each figure a benchmark writes carries its device, software versions, date and command
(`environment`), so a JSON line under bench/results/ says on its own how it was made.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def ensure_corpus(python: str = sys.executable, vocab_size: int = 8192) -> Path:
    """The quickstart's stdlib corpus (data/stdlib), prepared here if it is missing."""
    corpus = REPO / "data" / "stdlib"
    if not (corpus / "manifest.json").is_file():
        subprocess.run([python, str(REPO / "tools" / "prepare_data.py"), "--python-stdlib", "--output", str(corpus),
                        "--vocab-size", str(vocab_size)], check=True)
    return corpus


def clean_environment() -> dict:
    """This environment without a surrounding launcher's variables (a bench may run under torchrun)."""
    return {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}


def run_megallm(overrides: list[str], run_dir: Path, ranks: int = 1, python: str = sys.executable) -> dict:
    """launch/pretrain.py with `overrides` on `ranks` processes; its train records, or {"error": first line}."""
    launcher = [python] if ranks == 1 else [python, "-m", "torch.distributed.run", "--standalone",
                                             f"--nproc_per_node={ranks}"]
    began = time.perf_counter()
    result = subprocess.run([*launcher, str(REPO / "launch" / "pretrain.py"), *overrides, f"run_dir={run_dir}"],
                            cwd=REPO, env=clean_environment(), capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        return {"error": (errors or result.stderr.splitlines()[-1:] or ["failed"])[0]}
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {"train": [r for r in map(json.loads, lines) if r["kind"] == "train"],
            "wall_s": time.perf_counter() - began}


def steady_state(train: list[dict], after_step: int) -> dict:
    """Time-weighted throughput and per-step phase times over the records after `after_step`
    (each record covers the steps since the one before it)."""
    timed, previous, seconds, tokens, phases = 0, None, 0.0, 0.0, {}
    for record in train:
        if previous is not None and record["step"] > after_step:
            steps = record["step"] - previous
            elapsed = record["step_time_s"] * steps
            seconds += elapsed
            tokens += record["tokens_per_s"] * elapsed
            timed += steps
            for key in ("data_ms", "forward_backward_ms", "optimizer_ms"):
                if key in record:
                    phases[key] = phases.get(key, 0.0) + record[key] * steps
        previous = record["step"]
    if not timed:
        raise ValueError(f"no train record after step {after_step}: run more steps")
    tokens_per_s = tokens / seconds
    last = train[-1]
    return {"tokens_per_s": tokens_per_s, "step_time_s": seconds / timed, "timed_steps": timed,
            "tflops_per_device": last.get("tflops_per_device", 0) * tokens_per_s / last["tokens_per_s"],
            "mfu": None if last.get("mfu") is None else last["mfu"] * tokens_per_s / last["tokens_per_s"],
            "peak_mem_gib": max(r["peak_mem_gib"] for r in train), "final_loss": last["loss"],
            **{key: round(total / timed, 3) for key, total in phases.items()}}


def environment(device: Optional[str] = None) -> dict:
    """Date, device, software versions and command line of this measurement."""
    import torch  # deferred: the parent of a benchmark only needs it here

    if device is None:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
            f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "cuda": torch.version.cuda if torch.cuda.is_available() else None}
    for package in ("deepspeed", "megatron-core", "transformers", "liger-kernel", "triton"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"date": datetime.date.today().isoformat(), "device": device, "versions": versions,
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}


def append_jsonl(path: Optional[Path], record: dict) -> None:
    """Print `record` as one JSON line and append it to `path` if given."""
    line = json.dumps(record, sort_keys=False)
    print(line, flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as out:
            out.write(line + "\n")
