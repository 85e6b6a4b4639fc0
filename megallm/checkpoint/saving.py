"""Write a checkpoint from a running engine, and resume an engine from one.

Both are collective: every rank calls them. The engine writes and reads its own
DeepSpeed files (megallm.engine); this module adds each rank's RNG states, the run's
config, tokenizer and `RunState` with each file's checksum (megallm.checkpoint.verify),
and publishes the folder atomically (megallm.files). See megallm.checkpoint.state for
what a checkpoint holds.

Before writing, rank 0 checks the free space against the newest checkpoint's size (or an
estimate for the first one); a write that fails on any rank (a full disk mid-save) is
agreed on by every rank, the `.partial` folder removed, and one CheckpointError raised:
earlier checkpoints are untouched.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path
from typing import Collection, Optional

import numpy as np
import torch
import torch.distributed as dist

from megallm.checkpoint.portable import PortableState, apply_state
from megallm.checkpoint.state import (
    RNG_DIR,
    STATE_FILE,
    WEIGHTS_FILE,
    RunState,
    check_complete,
    complete_checkpoints,
    read_state,
    read_weights,
    tag_for,
)
from megallm.checkpoint.verify import checksums
from megallm.engine.engine import ParallelEngine
from megallm.errors import CheckpointError
from megallm.files import partial_path, publish, start_partial
from megallm.model.config import ModelConfig
from megallm.parallel.distributed import agree
from megallm.run_layout import RUN_CONFIG_FILE


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _rng_file(folder: Path, rank: int) -> Path:
    return folder / RNG_DIR / f"rank_{rank:05d}.pt"


def size_text(size: float) -> str:
    """A size in bytes as people read it: "1.23 GB", "456 MB", "7.8 kB"."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size / 1e3:.3g} kB"


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem that holds `path` (which exists)."""
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def filled_up(error: BaseException, folder: Path) -> bool:
    """Whether `error`, raised while writing under `folder`, came from a full filesystem (torch's
    zip writer and safetensors report one without errno: "unexpected pos", "iostream error")."""
    try:
        return getattr(error, "errno", None) == errno.ENOSPC or shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def checkpoint_bytes(path: Path) -> int:
    """The bytes a checkpoint's ranks wrote, from its state file."""
    return sum(read_state(path).files.values())


def _bytes_needed(root: Path, estimated_bytes: int) -> int:
    """The newest checkpoint's size under `root` (`estimated_bytes` for a first one, or where its
    state file cannot be read)."""
    previous = complete_checkpoints(root)
    try:
        return checkpoint_bytes(previous[-1]) if previous else estimated_bytes
    except CheckpointError:
        return estimated_bytes


def _space_problem(folder: Path, step: int, needed: int) -> Optional[str]:
    """One line if `folder`'s filesystem has less than `needed` bytes free."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free >= needed:
        return None
    return (f"no space left on {mount_point(folder)} to save step {step}: the checkpoint needs about "
            f"{size_text(needed)}, {size_text(free)} free; free some space or set checkpoint.dir to a larger "
            "filesystem (earlier checkpoints are intact)")


def _write_problem(error: BaseException, folder: Path, step: int, needed: int) -> str:
    """One line for an error while writing a checkpoint."""
    if filled_up(error, folder):
        return (f"no space left on {mount_point(folder)} while saving step {step}: the checkpoint needs about "
                f"{size_text(needed)}; free some space or set checkpoint.dir to a larger filesystem "
                "(earlier checkpoints are intact)")
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"saving step {step} to {folder} failed: {first_line} (earlier checkpoints are intact)"


def _agree(problem: Optional[str], distributed: bool) -> Optional[str]:
    return agree(problem) if distributed else problem


def save_checkpoint(engine: ParallelEngine, root: Path, state: RunState, config_yaml: str, keep_last: int,
                    consolidated: Optional[dict] = None, tokenizer_files: Optional[dict] = None,
                    estimated_bytes: int = 0, keep_steps: Collection[int] = ()) -> Optional[Path]:
    """Collective: write `root/step_NNNNNNNN` and delete all but the newest `keep_last` (0: keep all)
    and those of `keep_steps`.
    Returns the published folder (None if it already existed: it is never overwritten).
    The free space must hold the newest checkpoint's size, or `estimated_bytes` for a first one."""
    final = root / tag_for(state.step)
    rank = engine.ctx.rank
    if final.exists():  # e.g. resuming from an older checkpoint
        if rank == 0:
            print(f"checkpoint {final} exists already; keeping it and not saving step {state.step}", flush=True)
        return None
    needed = _bytes_needed(root, estimated_bytes) if rank == 0 else 0  # rank 0 alone checks the space
    write_checkpoint(engine, final, state, config_yaml, rank, consolidated=consolidated,
                     tokenizer_files=tokenizer_files, needed_bytes=needed)
    if rank == 0 and keep_last > 0:
        kept = {tag_for(step) for step in keep_steps}
        for old in complete_checkpoints(root)[:-keep_last]:
            if old.name not in kept:
                shutil.rmtree(old, ignore_errors=True)
    return final


def _write_rank_files(engine: ParallelEngine, partial: Path, rank: int) -> None:
    try:
        engine.save(partial)
    except BaseException:
        dist.barrier()  # DeepSpeed's save ends in a barrier this rank did not reach: stand in for it
        raise
    _rng_file(partial, rank).parent.mkdir(parents=True, exist_ok=True)
    torch.save(_rng_state(), _rng_file(partial, rank))


def write_checkpoint(engine: Optional[ParallelEngine], final: Path, state: RunState, config_yaml: str, rank: int,
                     consolidated: Optional[dict] = None, tokenizer_files: Optional[dict] = None,
                     needed_bytes: int = 0) -> Path:
    """Collective: write the checkpoint folder `final` through `<final>.partial` and a rename.

    `engine`: None for a weights-only checkpoint (rank 0 alone then). `consolidated` (rank
    0's full model from megallm.checkpoint.portable) is written as consolidated.pt. A full
    disk (fewer than `needed_bytes` free before, or an error while writing) raises
    CheckpointError on every rank, with the `.partial` folder removed.
    """
    partial, distributed = partial_path(final), engine is not None
    problem = _space_problem(final.parent, state.step, needed_bytes) if rank == 0 else None
    if problem is None and rank == 0:
        start_partial(final)
    problem = _agree(problem, distributed)
    if problem is None:
        try:
            if engine is not None:  # distributed
                dist.barrier()
                _write_rank_files(engine, partial, rank)
            if rank == 0:
                (partial / RUN_CONFIG_FILE).write_text(config_yaml)
                for name, text in (tokenizer_files or {}).items():
                    (partial / name).write_text(text)
                if consolidated is not None:
                    torch.save({"model": consolidated, "model_config": state.model}, partial / WEIGHTS_FILE)
        except (OSError, RuntimeError) as error:
            problem = _write_problem(error, final.parent, state.step, needed_bytes)
        problem = _agree(problem, distributed)
    if problem is None:
        names = [str(f.relative_to(partial)) for f in sorted(partial.rglob("*")) if f.is_file()] if rank == 0 else []
        if distributed:  # every rank hashes its share of the files
            shared = [names]
            dist.broadcast_object_list(shared, src=0)
            names = shared[0]
        state.checksums = checksums(partial, names, distributed)
        if rank == 0:
            try:
                state.files = {name: (partial / name).stat().st_size for name in names}
                (partial / STATE_FILE).write_text(state.to_json())
                publish(partial, final)
            except OSError as error:
                problem = _write_problem(error, final.parent, state.step, needed_bytes)
        problem = _agree(problem, distributed)
    if problem is not None:
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointError(problem)
    return final


def load_checkpoint(engine: ParallelEngine, path: Path) -> RunState:
    """Collective: restore the engine (weights, optimizer, LR schedule), this rank's RNG, and
    return the run state. A weights-only checkpoint sets the weights alone. A checkpoint of
    step 0 (imported, nothing trained yet) keeps this run's optimizer settings and LR
    schedule: only its weights (and empty optimizer) are taken. The files' sizes are checked here;
    their checksums were verified by whoever chose `path` (megallm.checkpoint.verify)."""
    state = read_state(path)
    check_complete(path, state)
    if state.weights_only:
        apply_state(engine, PortableState(weights=read_weights(path)), ModelConfig(**state.model))
        return state
    engine.load(path, untrained=state.step == 0)
    rng_file = _rng_file(path, engine.ctx.rank)
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return state
