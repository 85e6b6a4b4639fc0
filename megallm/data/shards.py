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
    mask_id: int | None = None  # masked-LM's mask token (train.objective=mlm); None: the tokenizer has none

    @property
    def segment_start_id(self) -> int:
        """The token that starts a document segment under document masking (megallm.model.packing):
        bos when documents carry one, else eos (megallm's own tokenizers)."""
        return self.bos_id if self.bos_id is not None else self.eos_id

    def require_mask_token(self, where: str) -> int:
        """The mask token's id, or a DataError saying how to give the corpus at `where` one."""
        if self.mask_id is None:
            raise DataError(f"train.objective=mlm needs a mask token, and the tokenizer of corpus {where} has none; "
                            "prepare the corpus again with tools/prepare_data.py (trained tokenizers have <|mask|>; "
                            "with --tokenizer add --mask-token '<|mask|>')")
        return self.mask_id

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
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} is not valid JSON ({exc}): it is damaged or was cut short; "
                            "re-run tools/prepare_data.py to write it again") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise DataError(f"{where} has format {found!r}, expected {FORMAT!r}; re-run tools/prepare_data.py")
        known = {f.name for f in fields(cls)}
        raw = {k: v for k, v in raw.items() if k in known}  # fields added by newer writers
        try:
            raw["splits"] = {k: [ShardInfo(**s) for s in v] for k, v in raw["splits"].items()}
            return cls(**raw)
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{where} is not a complete megallm manifest ({type(exc).__name__}: {exc}); "
                            "re-run tools/prepare_data.py to write it again") from exc


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


def read_documents(url: str, sha256: str | None = None):
    """Yield the token arrays of one shard in order, through WebDataset's opener and tar reader.

    `url` is a local path or any URL WebDataset opens (`https://`, `pipe:`, `gs://`). With
    `sha256` (the manifest's), the shard's bytes are checked against it before any is parsed.
    A damaged shard raises `DataError` naming it and what is wrong.
    """
    # deferred: webdataset imports torch; writing shards needs none
    from webdataset.gopen import gopen
    from webdataset.tariterators import group_by_keys, tar_file_expander

    fix = "re-create it with tools/prepare_data.py, or set data.skip_bad_shards=true"
    try:
        with gopen(url, "rb") as source:
            data = source.read()
    except Exception as exc:  # any transport: a local file, curl, gsutil, a pipe's command
        raise DataError(f"cannot read shard {url} ({type(exc).__name__}: {_reason(exc)}); check data.path") from exc
    if sha256 is not None and (actual := hashlib.sha256(data).hexdigest()) != sha256:
        raise DataError(f"shard {url} is damaged: its sha256 is {actual[:12]}, the manifest says {sha256[:12]} "
                        f"(changed on disk since it was written); {fix}")
    try:
        for sample in group_by_keys(tar_file_expander([{"url": url, "stream": io.BytesIO(data)}])):
            yield np.load(io.BytesIO(sample["tokens.npy"]), allow_pickle=False)
    except (tarfile.TarError, OSError, EOFError, ValueError, KeyError) as exc:
        raise DataError(f"shard {url} is unreadable ({type(exc).__name__}: {_reason(exc)}); {fix}") from exc


def _reason(exc: Exception) -> str:
    return str(exc.args[0]).split(" @ ")[0] if exc.args else ""  # WebDataset appends the file object


def present_side_files(folder: Path) -> list[str]:
    """The tokenizer's Hugging Face side files (megallm.files.TOKENIZER_SIDE_FILES) present in `folder`."""
    return [name for name in TOKENIZER_SIDE_FILES if (Path(folder) / name).is_file()]
