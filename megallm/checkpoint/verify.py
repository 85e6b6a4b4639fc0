"""Checksums of a checkpoint's files: recorded when it is saved, verified before a run resumes
from it and by `tools/convert_ckpt.py info`.

`megallm_state.json` lists every file the ranks wrote with its size (`files`) and its SHA-256
(`checksums`). The ranks share the hashing (file i by rank i mod world size), so a large
checkpoint is hashed in parallel, as it was written. A checkpoint of an earlier megallm
version has sizes only; those are checked.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import torch.distributed as dist

from megallm.checkpoint.state import RunState, read_state, step_folders
from megallm.errors import CheckpointError

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


def checkpoint_problem(path: Path, distributed: bool) -> Optional[str]:
    """Why the checkpoint `path` cannot be used (its state file unreadable, files missing,
    truncated or altered), or None; collective when `distributed`."""
    try:
        state = read_state(path)
    except CheckpointError as error:
        return str(error)
    damaged = damaged_files(path, state, distributed)
    if damaged:
        return (f"checkpoint {path} is damaged: {len(damaged)} of the {len(state.files)} files its ranks wrote, "
                f"e.g. {damaged[0]}")
    return None


def _aside(path: Path) -> Path:
    """Where a damaged checkpoint is moved: <name>.damaged, <name>.damaged.2, ..."""
    aside, n = path.with_name(f"{path.name}.damaged"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged.{n}")
    return aside


def choose_resume_checkpoint(resume: str, root: Path, on_damaged: str, distributed: bool, say) -> Optional[Path]:
    """Collective when `distributed`: resolve train.resume to a checkpoint that verifies.

    "auto": the newest step folder under `root` that verifies; a damaged newer one is reported
    through `say` and renamed `<name>.damaged` (so the run saves that step again), or, with
    `on_damaged` "stop", stops the run. A path given explicitly must verify.
    """
    if resume == "none":
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise CheckpointError(f"train.resume={resume} does not exist; pass a checkpoint folder or auto")
        problem = checkpoint_problem(path, distributed)
        if problem:
            raise CheckpointError(f"train.resume={resume}: {problem}; use another checkpoint")
        return path
    for path in reversed(step_folders(root)):
        problem = checkpoint_problem(path, distributed)
        if problem is None:
            return path
        if on_damaged == "stop":
            raise CheckpointError(f"{problem}; move it away to resume from the one before, or set "
                                  "checkpoint.on_damaged=fallback")
        aside = _aside(path)
        say(f"warning: {problem}; moved aside to {aside.name}, trying the checkpoint before it")
        if not distributed or dist.get_rank() == 0:
            path.rename(aside)
        if distributed:
            dist.barrier()
    return None
