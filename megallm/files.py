"""File names shared by several packages, and writes that a crash never leaves half done.

- `atomic_write_bytes` / `atomic_write_text`: one file through a temporary name that is
  unique per process, fsynced, then renamed over the final name.
- Folders are published in two steps, because a checkpoint's folder is filled by many
  ranks: `start_partial(final)` creates `<final>.partial` (replacing one a crash left
  behind), the writers fill it, and `publish(partial, final)` fsyncs every file and the
  folder, renames it to `final` and fsyncs the parent. A folder under its final name
  is therefore complete. `writing_folder(final)` does both around a block, for a
  single writer (an export, a weights-only import).
- Before a folder is created: `nearest_existing` (where creating it starts) and
  `read_only_filesystem`, for the one-line refusals of run folders and conversion outputs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

TOKENIZER_FILE = "tokenizer.json"  # in a prepared corpus, a checkpoint and a Hugging Face folder
# The Hugging Face files that describe a tokenizer beside tokenizer.json (special tokens, chat
# template); where present they travel with it into corpora, checkpoints and exports.
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_SIDE_FILES = (TOKENIZER_CONFIG_FILE, "special_tokens_map.json", "chat_template.jinja")
HF_CONFIG_FILE = "config.json"  # a Hugging Face model folder's config
PARTIAL_SUFFIX = ".partial"


def nearest_existing(path: Path) -> Path:
    """`path`, or the nearest of its parents that exists (a dangling link counts): the folder that
    creating `path` with its parents starts in."""
    path = Path(path)
    while not (path.exists() or path.is_symlink()) and path != path.parent:
        path = path.parent
    return path


def read_only_filesystem(path: Path) -> bool:
    """Whether the existing `path` lies on a filesystem mounted read-only."""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def temporary_path(path: Path) -> Path:
    """Where to write `path` before renaming it: unique per process, so concurrent writers never collide."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = temporary_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + PARTIAL_SUFFIX)


def start_partial(final: Path) -> Path:
    """Create an empty `<final>.partial` folder (and the parents of `final`) and return it."""
    partial = partial_path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(partial, ignore_errors=True)  # left by a crash during an earlier write
    partial.mkdir()
    return partial


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(partial: Path, final: Path) -> Path:
    """Put `partial`'s files and folders on disk, then rename it to `final` (which must not exist)."""
    for path in sorted(partial.rglob("*"), reverse=True):  # files before the folders that hold them
        _fsync(path)
    _fsync(partial)
    partial.rename(final)
    _fsync(final.parent)
    return final


@contextlib.contextmanager
def writing_folder(final: Path) -> Iterator[Path]:
    """Yield a fresh `<final>.partial` to fill; published as `final` when the block ends, removed
    if it raises."""
    partial = start_partial(final)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    publish(partial, final)
