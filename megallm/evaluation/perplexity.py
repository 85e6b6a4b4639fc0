"""Perplexity on held-out text: a prepared corpus's split, or plain text and JSON-lines files.

Sources:
- a prepared megallm corpus folder (manifest.json; tools/prepare_data.py): the documents of one
  split (default "val"), read from its shards in manifest order, as stored: `[bos] + tokens + [eos]`
  (bos only for tokenizers that add one). Its tokenizer must be the model's;
- files: `.jsonl` / `.jsonl.gz` (one document per line, from a field, default "text"), `.parquet`,
  or plain UTF-8 text (the whole file one document), read as tools/prepare_data.py reads them
  (megallm.data.formats) and tokenized as it does, `[bos] + tokens + [eos]`.

Documents are scored either
- "joined" (default): concatenated in order into one stream, as training packs them, attention
  running across document boundaries within a window; or
- "separate": each document its own stream, no attention across documents.
A stream is put after the document start token (megallm.data.tokenizer.SpecialTokens; not again
when it begins with it), then scored in windows of `seq_len` tokens of input that move by `stride`
(megallm.evaluation.model.windows: Hugging Face's sliding-window recipe), each token predicted once
from the tokens before it in its window. stride = seq_len (the default) gives disjoint windows,
lm-evaluation-harness's rolling windows; a smaller stride gives every prediction after the first
window at least seq_len - stride tokens of context, for stream length / stride windows of work.
The window that reaches the end keeps seq_len tokens of input. `seq_len` defaults to the context
the model was trained at (megallm.inference.context) and may not exceed it: past it the model
extrapolates. `max_tokens` stops after that many documents' tokens (the last one cut).

Reported, with N the predicted tokens, NLL = -sum of their log-probabilities (natural log) and
B the UTF-8 bytes of the scored documents' text (each document's tokens decoded, special tokens
left out):
    mean NLL per token      = NLL / N                         (nats)
    perplexity (per token)  = exp(NLL / N)
    bits per byte           = NLL / (B * ln 2)
    byte perplexity         = exp(NLL / B) = 2 ** bits_per_byte
Bits per byte and byte perplexity do not depend on the tokenizer, so they compare models whose
tokenizers differ; token perplexity does not.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from megallm.data.corpus import open_corpus
from megallm.data.formats import documents, pieces
from megallm.data.shards import MANIFEST, read_documents
from megallm.errors import DataError, UsageError
from megallm.evaluation.model import EvalModel, Request, windows

MODES = ("joined", "separate")


@dataclass
class Perplexity:
    source: str
    mode: str
    seq_len: int
    documents: int
    tokens: int  # predicted tokens, N
    bytes: int   # UTF-8 bytes of the documents' decoded text, B
    nll: float   # total negative log-likelihood, nats
    stride: Optional[int] = None  # tokens each window moves by; seq_len (or None): disjoint windows

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (self.bytes * math.log(2))

    @property
    def byte_perplexity(self) -> float:
        return math.exp(self.nll / self.bytes)

    def as_dict(self) -> dict:
        return {**asdict(self), "mean_nll": self.mean_nll, "perplexity": self.perplexity,
                "bits_per_byte": self.bits_per_byte, "byte_perplexity": self.byte_perplexity}


def is_corpus(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def corpus_documents(model: EvalModel, folder: Path, split: str) -> Iterator[list[int]]:
    """The token ids of each document of `split` of a prepared corpus, in manifest order (each shard
    checked against the manifest's sha256)."""
    corpus = open_corpus(str(folder), str(model.tokenizer_file), (split,))
    for info in corpus.manifest.splits[split]:
        for doc in read_documents(corpus.url(info.path), info.sha256):
            yield doc.tolist()


def file_documents(model: EvalModel, files: Sequence[Path], text_field: str) -> Iterator[list[int]]:
    """Each document of the files as tools/prepare_data.py tokenizes it: [bos] + tokens + [eos]."""
    first = [] if model.special.bos_id is None else [model.special.bos_id]
    for path in files:
        if not Path(path).is_file():
            raise UsageError(f"perplexity source {path} is neither a prepared corpus folder nor a file")
        for piece in pieces(Path(path), 1 << 62, text_field):
            for _, text in documents(piece, text_field):
                yield first + model.encode(text) + [model.special.eos_id]


def documents_of(model: EvalModel, sources: Sequence[Path], split: str, text_field: str) -> Iterator[list[int]]:
    sources = [Path(s) for s in sources]
    if len(sources) == 1 and is_corpus(sources[0]):
        yield from corpus_documents(model, sources[0], split)
    elif any(is_corpus(s) for s in sources):
        raise UsageError("pass one prepared corpus folder, or text / JSON-lines files, not both")
    else:
        yield from file_documents(model, sources, text_field)


def check_windows(seq_len: Optional[int], stride: Optional[int], limit: int, bound: str) -> tuple[int, int]:
    """(seq_len, stride) with their defaults (`limit`, seq_len), or a UsageError: a window longer than `limit`
    tokens, the context the model was trained at (`bound` says so: "the 256 tokens ... was trained at
    (...)"), or a stride longer than the window."""
    seq_len = seq_len or limit
    stride = stride or seq_len
    if seq_len < 1 or stride < 1:
        raise UsageError("the sequence length and the stride must be >= 1")
    if seq_len > limit:
        raise UsageError(f"--seq-len {seq_len} is beyond {bound}: the model would extrapolate to positions it never "
                         f"trained on; pass --seq-len {limit} or less")
    if stride > seq_len:
        raise UsageError(f"--stride {stride} is longer than the {seq_len}-token window: tokens between windows would "
                         f"go unscored; pass --stride {seq_len} or less")
    return seq_len, stride


def perplexity(model: EvalModel, sources: Sequence[Path], *, split: str = "val", mode: str = "joined",
               seq_len: Optional[int] = None, stride: Optional[int] = None, max_tokens: Optional[int] = None,
               text_field: str = "text", progress: Optional[Callable[[str], None]] = None) -> Perplexity:
    """Perplexity of `model` on `sources` (one corpus folder, or files); see the module docstring."""
    if mode not in MODES:
        raise UsageError(f"documents mode {mode!r} is not one of {', '.join(MODES)}")
    if max_tokens is not None and max_tokens < 1:
        raise UsageError("the token limit must be >= 1")
    bound = model.trained.describe(model.source) if model.trained else f"the model's {model.max_length} tokens"
    seq_len, stride = check_windows(seq_len, stride, model.max_length, bound)
    docs, total = [], 0
    for doc in documents_of(model, sources, split, text_field):
        if max_tokens is not None and total + len(doc) > max_tokens:
            doc = doc[:max_tokens - total]
        docs.append(doc)
        total += len(doc)
        if max_tokens is not None and total >= max_tokens:
            break
    if not docs:
        raise DataError(f"no documents in {', '.join(map(str, sources))}")
    streams = [[t for d in docs for t in d]] if mode == "joined" else docs
    start = model.special.document_start_id
    requests: list[Request] = []
    for stream in streams:
        tokens = stream[1:] if stream[:1] == [start] else stream
        requests += windows([start] + tokens, 1, seq_len, stride)
    scores = model.score(requests, progress=_Progress(len(requests), progress).advance)
    return Perplexity(source=", ".join(map(str, sources)), mode=mode, seq_len=seq_len, stride=stride,
                      documents=len(docs),
                      tokens=sum(len(cont) for _, cont in requests),
                      bytes=sum(len(model.decode(d).encode("utf-8")) for d in docs),
                      nll=-sum(logprob for logprob, _ in scores))


class _Progress:
    """A line every `every` seconds: windows done, tokens per second."""

    def __init__(self, total: int, out: Optional[Callable[[str], None]], every: float = 10.0):
        self.total, self.out, self.every = total, out, every
        self.done, self.began = 0, time.perf_counter()
        self.last = self.began

    def advance(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if self.out and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            self.out(f"perplexity: {self.done:,}/{self.total:,} windows, "
                     f"{self.done / max(now - self.began, 1e-9):,.1f} windows/s")
