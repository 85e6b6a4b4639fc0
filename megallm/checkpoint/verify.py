"""Checksums of a checkpoint's files: recorded when it is saved, verified before a run resumes
from it and on every read by `tools/convert_ckpt.py` (export, reshard, info), generation,
evaluation and fine-tuning.

`megallm_state.json` lists every file the ranks wrote with its size (`files`) and its SHA-256
(`checksums`), and carries a SHA-256 of its own (megallm.checkpoint.state). The ranks share the
hashing (file i by rank i mod world size), so a large checkpoint is hashed in parallel, as it
was written. A checkpoint of an earlier megallm version has sizes only; those are checked.

Which checkpoint a run resumes is decided from rank 0's view of the folder: rank 0 lists the
checkpoints and reads their state files and hands them to the other ranks, so every rank
judges the same candidates even while rank 0 moves a damaged one aside.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch.distributed as dist

from megallm.checkpoint.state import USE_ANOTHER, RunState, read_state, step_folders
from megallm.errors import CheckpointError
from megallm.parallel.distributed import agree

_CHUNK = 8 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _share(names: list[str], distributed: bool) -> list[str]:
    """This rank's part of `names` (all of them outside a process group)."""
    if not distributed:
        return names
    return names[dist.get_rank()::dist.get_world_size()]


def _gather(items: list, distributed: bool) -> list:
    """Every rank's `items`, concatenated in rank order (collective when `distributed`)."""
    if not distributed:
        return items
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def checksums(folder: Path, names: list[str], distributed: bool) -> dict[str, str]:
    """SHA-256 of each of `names` under `folder`, shared among the ranks when `distributed`."""
    return dict(_gather([(name, file_sha256(folder / name)) for name in _share(names, distributed)], distributed))


def damaged_files(path: Path, state: RunState, distributed: bool) -> list[str]:
    """The files of the checkpoint `path` that are missing, of another size or fail their checksum."""
    damaged = []
    for name in _share(sorted(state.files), distributed):
        file = path / name
        if not file.is_file() or file.stat().st_size != state.files[name]:
            damaged.append(f"{name} (missing or truncated)")
        elif name in state.checksums and file_sha256(file) != state.checksums[name]:
            damaged.append(f"{name} (fails its checksum)")
    return _gather(damaged, distributed)


def _on_rank0(value_of: Callable[[], Any], distributed: bool) -> Any:
    """Collective when `distributed`: `value_of()` computed on rank 0 alone, on every rank."""
    if not distributed:
        return value_of()
    box = [value_of() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _state_or_problem(path: Path) -> Union[RunState, str]:
    try:
        return read_state(path)
    except CheckpointError as error:  # the callers say what to do instead
        return str(error).removesuffix(f"; {USE_ANOTHER}")


def checkpoint_problem(path: Path, distributed: bool) -> Optional[str]:
    """Why the checkpoint `path` cannot be used (its state file missing or damaged, files missing,
    truncated or altered), or None; collective when `distributed` (rank 0 reads the state
    file, the ranks share the hashing, every rank gets the same answer)."""
    state = _on_rank0(lambda: _state_or_problem(path), distributed)
    if isinstance(state, str):
        return state
    damaged = damaged_files(path, state, distributed)
    if damaged:
        return (f"checkpoint {path} is damaged: {len(damaged)} of the {len(state.files)} files its ranks wrote, "
                f"e.g. {damaged[0]}")
    return None


def verified_state(path: Path) -> RunState:
    """The RunState of the checkpoint `path` once every file verifies (this process hashes them);
    CheckpointError naming the damage otherwise."""
    problem = checkpoint_problem(path, distributed=False)
    if problem:
        raise CheckpointError(f"{problem}; {USE_ANOTHER} (nothing was read from this one)")
    return read_state(path)


def _aside(path: Path) -> Path:
    """Where a damaged checkpoint is moved: <name>.damaged, <name>.damaged.2, ..."""
    aside, n = path.with_name(f"{path.name}.damaged"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged.{n}")
    return aside


def _move_aside(path: Path, problem: str, say: Callable[[str], Any]) -> Optional[str]:
    """Rename the damaged checkpoint `path` out of the way; a line if that fails."""
    aside = _aside(path)
    try:
        path.rename(aside)
    except OSError as error:
        return (f"{problem}; moving it aside to {aside.name} failed ({error.strerror}): move or remove it "
                "to resume from the checkpoint before it")
    say(f"warning: {problem}; moved aside to {aside.name}, trying the checkpoint before it")
    return None


def choose_resume_checkpoint(resume: str, root: Path, on_damaged: str, distributed: bool, say) -> Optional[Path]:
    """Collective when `distributed`: resolve train.resume to a checkpoint that verifies, the same
    on every rank (rank 0 lists the folder and reads the state files, see the module docstring).

    "auto": the newest step folder under `root` that verifies; a damaged newer one is reported
    through `say` and renamed `<name>.damaged` by rank 0 (so the run saves that step again), or,
    with `on_damaged` "stop", stops the run. A path given explicitly must verify.
    """
    if resume == "none":
        return None
    is_rank0 = not distributed or dist.get_rank() == 0
    if resume != "auto":
        path = Path(resume)
        if not _on_rank0(path.is_dir, distributed):
            raise CheckpointError(f"train.resume={resume} does not exist; pass a checkpoint folder or auto")
        problem = checkpoint_problem(path, distributed)
        if problem:
            raise CheckpointError(f"train.resume={resume}: {problem}; {USE_ANOTHER}")
        return path
    for path in reversed(_on_rank0(lambda: step_folders(root), distributed)):
        problem = checkpoint_problem(path, distributed)
        if problem is None:
            return path
        if on_damaged == "stop":
            raise CheckpointError(f"{problem}; move it away to resume from the one before, or set "
                                  "checkpoint.on_damaged=fallback")
        failed = _move_aside(path, problem, say) if is_rank0 else None
        failed = agree(failed) if distributed else failed
        if failed:
            raise CheckpointError(failed)
    return None
