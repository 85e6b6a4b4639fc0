"""One work unit, as a worker process runs it: tokenize, split, write its shards, then its record.

A unit's documents are read in order and tokenized in batches of at most
`ENCODE_BATCH_CHARS` characters (without the tokenizer's own special tokens). A longer
document is encoded in pieces of at most that many characters, each cut just before a
space that precedes a word where there is one (`encoding_pieces`; Llama 3's own tokenizer
code cuts long texts likewise), so a worker's memory stays bounded whatever one document
holds (a 50 MB line once took 9.4 GB in one call). For tokenizers that split words at
spaces (byte-level BPEs, Metaspace, WordPiece) the tokens are those of the whole document;
only a run of half a piece without a space is cut inside a word.

Each document becomes `[bos] + tokens + [eos]` (bos only for tokenizers whose
post-processor adds one: megallm.data.tokenizer.special_tokens) and goes to "train" or
"val" by a hash of its identity. Each split's documents fill shards
`<split>-uUUUUUU-NNNNN.tar` of about `shard_tokens` tokens (the last one shorter), each
written atomically. Then `records/unit-UUUUUU.json` lists the shards with their sizes and
checksums. That record, written last, is what makes a unit count as done. A re-run skips
a unit when its record matches the unit and the settings and every shard is there with
the recorded size and checksum. It redoes any other unit. A plain-text input that is not
all UTF-8 is reported in the unit's result (`UnitResult.warnings`), one line per file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from megallm.data.formats import Undecodable
from megallm.data.plan import Unit
from megallm.data.shards import file_sha256, token_dtype, write_shard
from megallm.data.tokenizer import load_tokenizer, tokenizer_hash
from megallm.errors import DataError
from megallm.files import TOKENIZER_FILE, atomic_write_bytes

RECORDS = "records"  # folder of the corpus holding unit and part records
SPLITS = ("train", "val")
ENCODE_BATCH_CHARS = 1 << 20  # text handed to the tokenizer per call, and the longest piece of a document
_WORD_AFTER_SPACE = re.compile(r"\S ")  # searched in reversed text: a space (U+0020), then a word
SHARD_NAME = re.compile(r"^(train|val)-u\d{6,}-\d{5,}\.tar$")


@dataclass(frozen=True)
class UnitSettings:
    """Everything besides the unit's inputs that its shards depend on."""

    tokenizer_sha256: str
    text_field: str
    val_fraction: float
    shard_tokens: int
    eos_id: int  # appended to every document
    bos_id: Optional[int] = None  # put before every document (tokenizers that add one)


@dataclass(frozen=True)
class UnitResult:
    index: int
    tokens: int
    documents: int
    size: int  # input bytes
    skipped: bool  # done by an earlier run
    warnings: tuple[str, ...] = ()  # one line per input file that was not all UTF-8


def shard_name(split: str, unit_index: int, shard_index: int) -> str:
    return f"{split}-u{unit_index:06d}-{shard_index:05d}.tar"


def record_path(output: Path, unit_index: int) -> Path:
    return output / RECORDS / f"unit-{unit_index:06d}.json"


def recorded_shards(record: dict) -> list[dict]:
    """A unit record's shards, every split."""
    return [shard for split in SPLITS for shard in record["shards"][split]]


def hash_bucket(identity: str) -> float:
    """A document's place in [0, 1), from its identity alone."""
    return int.from_bytes(hashlib.sha1(identity.encode()).digest()[:4], "big") / 2**32


def forced_validation_identity(unit: Unit, settings: UnitSettings) -> str | None:
    """The document unit 0 holds out when hashing holds out none of its own.

    So even a tiny corpus gets a validation document, by a rule that needs no other unit.
    """
    if unit.index != 0 or settings.val_fraction <= 0:
        return None
    buckets = {identity: hash_bucket(identity) for identity, _ in unit.documents(settings.text_field)}
    if not buckets or min(buckets.values()) < settings.val_fraction:
        return None
    return min(buckets, key=buckets.__getitem__)


class SplitShards:
    """One split's documents of one unit, cut into shards of about `shard_tokens` tokens."""

    def __init__(self, output: Path, split: str, unit_index: int, shard_tokens: int):
        self.output, self.split, self.unit_index, self.shard_tokens = output, split, unit_index, shard_tokens
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.documents_written = 0
        self.written: list[dict] = []  # ShardInfo fields plus the file's size in bytes

    def add(self, document: np.ndarray) -> None:
        self.pending.append(document)
        self.pending_tokens += len(document)
        if self.pending_tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        path = self.output / shard_name(self.split, self.unit_index, len(self.written))
        info = write_shard(path, self.pending, first_index=self.documents_written)
        self.written.append({**asdict(info), "bytes": path.stat().st_size})
        self.documents_written += len(self.pending)
        self.pending, self.pending_tokens = [], 0


@lru_cache(maxsize=1)
def worker_tokenizer(path: Path, expected_sha256: str):
    tok = load_tokenizer(path)
    if tokenizer_hash(tok) != expected_sha256:
        raise DataError(f"{path} changed while preparing (another prepare wrote it?); run one prepare per --output")
    # A document's text is text: one that spells "<|endoftext|>" or "<|mask|>" gets those characters'
    # ordinary tokens, never the special ids (a false end of document, a mask in the data).
    tok.encode_special_tokens = True
    return tok


def init_worker() -> None:
    """Pool initializer: one tokenizer thread per worker, since the workers are the parallelism."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def encoding_pieces(text: str, limit: int = ENCODE_BATCH_CHARS) -> Iterator[str]:
    """`text` in pieces of at most `limit` characters, each cut before the last space that precedes a
    word in the second half of its window (else at the limit): what one encode call gets."""
    start = 0
    while len(text) - start > limit:
        low, end = start + limit // 2, start + limit
        found = _WORD_AFTER_SPACE.search(text[end:low - 1:-1])  # text[end] down to text[low]
        cut = end - found.start() - 1 if found else end  # the space's index, else the limit
        yield text[start:cut]
        start = cut
    yield text[start:]


def document_pieces(docs: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str, bool]]:
    """(identity, piece, whether it is the document's last) of each piece of each document."""
    for identity, text in docs:
        previous = None
        for piece in encoding_pieces(text):
            if previous is not None:
                yield identity, previous, False
            previous = piece
        assert previous is not None  # encoding_pieces yields at least one piece, "" for an empty text
        yield identity, previous, True


def batches(pieces: Iterable[tuple[str, str, bool]], max_chars: int) -> Iterator[list[tuple[str, str, bool]]]:
    """The pieces in batches of at most `max_chars` characters (a longer piece alone): what one encode call gets,
    whose memory grows with it (about 200 bytes a character)."""
    batch: list[tuple[str, str, bool]] = []
    chars = 0
    for piece in pieces:
        if batch and chars + len(piece[1]) > max_chars:
            yield batch
            batch, chars = [], 0
        batch.append(piece)
        chars += len(piece[1])
    if batch:
        yield batch


def run_unit(unit: Unit, output: Path, settings: UnitSettings) -> UnitResult:
    """Tokenize one unit into its shards and record, unless an earlier run finished it."""
    record = finished_record(output, unit, settings)
    skipped = record is not None
    undecodable: list[Undecodable] = []
    if record is None:
        record = tokenize_unit(unit, output, settings, undecodable)
    shards = recorded_shards(record)
    return UnitResult(unit.index, sum(s["tokens"] for s in shards), sum(s["documents"] for s in shards),
                      unit.size, skipped, tuple(problem.warning() for problem in undecodable))


def tokenize_unit(unit: Unit, output: Path, settings: UnitSettings, undecodable: list[Undecodable]) -> dict:
    """Write the unit's shards and record; its plain-text files that are not all UTF-8 go to `undecodable`."""
    tok = worker_tokenizer(output / TOKENIZER_FILE, settings.tokenizer_sha256)
    dtype = token_dtype(tok.get_vocab_size())
    first = np.array([] if settings.bos_id is None else [settings.bos_id], dtype=dtype)
    last = np.array([settings.eos_id], dtype=dtype)
    remove_unit_output(output, unit.index)
    forced = forced_validation_identity(unit, settings)
    writers = {split: SplitShards(output, split, unit.index, settings.shard_tokens) for split in SPLITS}
    document: list[np.ndarray] = []  # the tokens of the document's pieces so far
    pieces = document_pieces(unit.documents(settings.text_field, undecodable))
    for batch in batches(pieces, ENCODE_BATCH_CHARS):
        encodings = tok.encode_batch_fast([piece for _, piece, _ in batch], add_special_tokens=False)
        for (identity, _, ends), encoding in zip(batch, encodings):
            document.append(np.array(encoding.ids, dtype=dtype))
            if ends:
                held_out = identity == forced or hash_bucket(identity) < settings.val_fraction
                writers["val" if held_out else "train"].add(np.concatenate([first, *document, last]))
                document = []
    for writer in writers.values():
        writer.flush()
    record = {"unit": unit.describe(), "settings": asdict(settings),
              "shards": {split: writer.written for split, writer in writers.items()}}
    path = record_path(output, unit.index)
    path.parent.mkdir(exist_ok=True)
    atomic_write_bytes(path, json.dumps(record, indent=1).encode())
    return record


def finished_record(output: Path, unit: Unit, settings: UnitSettings) -> dict | None:
    """The unit's record if an earlier run finished it with these inputs and settings and its shards are intact."""
    try:
        record = json.loads(record_path(output, unit.index).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("unit") != unit.describe() or record.get("settings") != asdict(settings):
        return None
    for shard in recorded_shards(record):
        path = output / shard["path"]
        if not path.is_file() or path.stat().st_size != shard["bytes"] or file_sha256(path) != shard["sha256"]:
            return None
    return record


def remove_unit_output(output: Path, unit_index: int) -> None:
    """Delete what an earlier, unfinished or outdated run of the unit left: its record, then its shards."""
    record_path(output, unit_index).unlink(missing_ok=True)
    for split in SPLITS:
        shard_index = 0
        while (path := output / shard_name(split, unit_index, shard_index)).exists():
            path.unlink()
            shard_index += 1
