"""Token shards and their manifest: the on-disk corpus format.

A prepared corpus is a folder with `manifest.json`, `tokenizer.json` (with the Hugging Face
files that declare its special tokens and chat template, where it has them) and WebDataset tar
shards (`<split>-uUUUUUU-NNNNN.tar`: shard N of work unit U; readers take the paths from
the manifest, never from the names). Each tar sample is one document, key `DDDDDDDDD`
(unique within its shard), holding `tokens.npy` (its token ids in the manifest's dtype,
ending with the end-of-document token `eos_id`, beginning with `bos_id` when the tokenizer
has one). The manifest lists each split's shards in order
and is written last and atomically: a folder without one is not a corpus. Fields may be
added to the manifest, never renamed or removed; readers ignore fields they do not know.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from megallm.errors import DataError
from megallm.files import TOKENIZER_FILE, TOKENIZER_SIDE_FILES, atomic_write_bytes, temporary_path

FORMAT = "megallm-tokens/1"
MANIFEST = "manifest.json"


@dataclass
class ShardInfo:
    path: str  # relative to the corpus folder
    tokens: int
    documents: int
    sha256: str


@dataclass
class Manifest:
    vocab_size: int
    tokenizer_sha256: str
    eos_id: int
    dtype: str
    splits: dict[str, list[ShardInfo]] = field(default_factory=dict)
    tokenizer_file: str = TOKENIZER_FILE
    format: str = FORMAT
    # How the corpus was prepared (None in corpora from before these fields existed).
    text_field: str | None = None  # JSON-lines key / Parquet column the documents came from
    val_fraction: float | None = None  # share of documents hashed into the "val" split
    shard_tokens: int | None = None  # target tokens per shard
    unit_bytes: int | None = None  # input bytes per work unit
    units: int | None = None  # work units the inputs were cut into
    bos_id: int | None = None  # begins every document (tokenizers whose post-processor adds one)
    tokenizer_side_files: list[str] = field(default_factory=list)  # tokenizer_config.json etc. beside the tokenizer

    @property
    def segment_start_id(self) -> int:
        """The token that starts a document segment under document masking (megallm.model.packing):
        bos when documents carry one, else eos (megallm's own tokenizers)."""
        return self.bos_id if self.bos_id is not None else self.eos_id

    def tokens(self, split: str) -> int:
        return sum(s.tokens for s in self.splits.get(split, []))

    def save(self, folder: Path) -> None:
        atomic_write_bytes(folder / MANIFEST, json.dumps(asdict(self), indent=1).encode())

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest":
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise DataError(
                f"no corpus at {folder}: {MANIFEST} is missing; prepare one with "
                f"`python tools/prepare_data.py --output {folder} ...` or set data.path"
            )
        return cls.parse(path.read_text(), where=str(path))

    @classmethod
    def parse(cls, text: str, where: str) -> "Manifest":
        """A manifest from its JSON text (`where` names it in errors)."""
        raw = json.loads(text)
        if raw.get("format") != FORMAT:
            raise DataError(f"{where} has format {raw.get('format')!r}, expected {FORMAT!r}; re-run tools/prepare_data.py")
        known = {f.name for f in fields(cls)}
        raw = {k: v for k, v in raw.items() if k in known}  # fields added by newer writers
        raw["splits"] = {k: [ShardInfo(**s) for s in v] for k, v in raw["splits"].items()}
        return cls(**raw)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(path: Path, documents: list[np.ndarray], first_index: int) -> ShardInfo:
    """Write documents to a tar at `path` atomically (temporary name, then rename)."""
    tmp = temporary_path(path)
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i, doc in enumerate(documents):
            buf = io.BytesIO()
            np.save(buf, doc, allow_pickle=False)
            info = tarfile.TarInfo(f"{first_index + i:09d}.tokens.npy")
            info.size, info.mtime, info.mode = buf.tell(), 0, 0o644  # fixed metadata: identical re-runs
            buf.seek(0)
            tar.addfile(info, buf)
    os.replace(tmp, path)
    return ShardInfo(path.name, int(sum(len(d) for d in documents)), len(documents), file_sha256(path))


def read_documents(url: str):
    """Yield the token arrays of one shard in order, through WebDataset's tar reader.

    `url` is a local path or any URL WebDataset opens (`https://`, `pipe:`, `gs://`).
    A damaged shard raises `DataError` naming it.
    """
    from webdataset.tariterators import tarfile_samples  # deferred: imports torch; writing shards needs none

    try:
        for sample in tarfile_samples([{"url": url}]):
            yield np.load(io.BytesIO(sample["tokens.npy"]), allow_pickle=False)
    except (tarfile.TarError, OSError, EOFError, ValueError, KeyError) as exc:
        reason = str(exc.args[0]).split(" @ ")[0] if exc.args else ""  # WebDataset appends the file object
        raise DataError(f"shard {url} is unreadable ({type(exc).__name__}: {reason}); re-create it with "
                        "tools/prepare_data.py, or set data.skip_bad_shards=true") from exc


def present_side_files(folder: Path) -> list[str]:
    """The tokenizer's Hugging Face side files (megallm.files.TOKENIZER_SIDE_FILES) present in `folder`."""
    return [name for name in TOKENIZER_SIDE_FILES if (Path(folder) / name).is_file()]
