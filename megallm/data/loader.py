"""Streaming training and evaluation batches from WebDataset token shards.

Shards are read whole with WebDataset's tar reader, from a local folder or any URL
scheme WebDataset opens (`https://`, `pipe:`, `gs://`, ...), and packed into windows of
`seq_len + 1` tokens (inputs = first `seq_len`, labels = last `seq_len`). Which window
is global sample `g` is decided independently of the layout: for a mixture of corpora,
which source (megallm.data.blend) and which of that source's samples; within a source, which
window (megallm.data.order.SampleOrder). One corpus is a mixture of itself alone.

Splitting: data-parallel rank `r` of `dp` takes samples `g = n * dp + r` (`n` = 0, 1,
...), so within an optimizer step micro-batch `j` of rank `r` holds samples
`consumed + (j * dp + r) * mbs + [0, mbs)`, and every rank has a next sample forever
(epochs follow one another): no rank runs dry. Each rank's `W` loader workers take its
samples round-robin, which is the order PyTorch's DataLoader returns them in. With
`streams` a multiple of `dp * W`, each worker reads only its own streams' shards.
Tensor- and pipeline-parallel ranks of one data-parallel group read the same samples.

A damaged shard is an error naming it, or, with `skip_bad_shards`, is replaced by the
next readable shard of the epoch (same window index), so step counts and resume stay
exact; the skipped shards are counted.
"""

from __future__ import annotations

import signal
from collections import OrderedDict
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data._utils import signal_handling as loader_signals

from megallm.data.blend import Blend, StagedBlend
from megallm.data.corpus import Corpus
from megallm.data.mixture import Mixture
from megallm.data.order import Address, SampleOrder
from megallm.data.shards import ShardInfo, read_documents
from megallm.errors import DataError
from megallm.parallel.lifetime import die_with_parent


def read_shard_tokens(url: str, info: ShardInfo, vocab_size: int, verify: bool = True) -> np.ndarray:
    """One shard's documents, concatenated in order, checked against the manifest (its sha256 too,
    with `verify`) and the vocabulary."""
    docs = list(read_documents(url, info.sha256 if verify else None))
    tokens = np.concatenate(docs) if docs else np.zeros(0, dtype=np.uint16)
    if len(tokens) != info.tokens:
        raise DataError(f"shard {url} holds {len(tokens)} tokens but the manifest lists {info.tokens}: it is "
                        "truncated or from another run; re-create it with tools/prepare_data.py, or set "
                        "data.skip_bad_shards=true")
    if len(tokens) and int(tokens.max()) >= vocab_size:
        raise DataError(f"shard {url} holds token id {int(tokens.max())} >= vocab size {vocab_size}: it was "
                        "written with another tokenizer; re-create it with tools/prepare_data.py")
    return tokens


def read_shard_windows(url: str, info: ShardInfo, vocab_size: int, seq_len: int, verify: bool = True) -> np.ndarray:
    """One shard packed into windows: [tokens // (seq_len + 1), seq_len + 1]."""
    tokens = read_shard_tokens(url, info, vocab_size, verify)
    count = len(tokens) // (seq_len + 1)
    return tokens[:count * (seq_len + 1)].reshape(count, seq_len + 1)


class ShardWindows:
    """Reads shards on demand and keeps the most recently used ones' windows. A shard's sha256 is
    checked against the manifest the first time this process reads it."""

    def __init__(self, corpus: Corpus, split: str, seq_len: int, capacity: int, skip_bad: bool):
        self.corpus, self.shards = corpus, corpus.manifest.splits[split]
        self.seq_len, self.capacity, self.skip_bad = seq_len, max(1, capacity), skip_bad
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.bad: set[int] = set()
        self.verified: set[int] = set()

    def _windows(self, shard: int) -> np.ndarray:
        if shard in self.cache:
            self.cache.move_to_end(shard)
            return self.cache[shard]
        info = self.shards[shard]
        windows = read_shard_windows(self.corpus.url(info.path), info, self.corpus.manifest.vocab_size, self.seq_len,
                                     verify=shard not in self.verified)
        self.verified.add(shard)
        self.cache[shard] = windows
        if len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return windows

    def window(self, order: SampleOrder, address: Address) -> np.ndarray:
        target = order.substitute(address, self.bad) if address.shard in self.bad else address
        while True:
            try:
                return self._windows(target.shard)[target.window]
            except DataError as exc:
                if not self.skip_bad:
                    raise
                self.bad.add(target.shard)
                print(f"warning: skipping shard {self.shards[target.shard].path}: {exc}", flush=True)
                target = order.substitute(address, self.bad)


def chunk_size(streams: int, dp: int, workers: int, limit: int = 16) -> int:
    """Samples a worker sends at once: the most (up to `limit`) that keep each worker on its own streams.

    A rank's `streams / dp` streams repeat every `streams / dp` of its samples; chunks of `k`
    consecutive samples dealt round-robin to `workers` stay on disjoint streams when
    `k * workers` divides that period.
    """
    if streams % dp or (streams // dp) % workers:
        return 1
    period, k = streams // dp, 1
    while 2 * k <= limit and period % (2 * k * workers) == 0:
        k *= 2
    return k


class RankSamples(IterableDataset):
    """The samples of one data-parallel rank from its `first_sample` on, dealt to loader workers.

    The rank's samples are `first_sample + n * dp`; worker `w` of `W` takes the chunks
    `c = w, w + W, ...` of `chunk` consecutive ones (n in [c * chunk, (c + 1) * chunk)),
    which is the order DataLoader returns them in. Yields `("ok", sample indices, windows [chunk,
    seq_len + 1], skipped shard indices)` (indices into the sources' shard lists laid end to end);
    a `DataError` is yielded as `("error", message)` and raised by the reader, so it reaches the
    user as one line.
    """

    def __init__(self, corpora: Sequence[Corpus], split: str, orders: Sequence[SampleOrder],
                 blend: Blend | StagedBlend, seq_len: int, first_sample: int, dp: int, chunk: int, skip_bad: bool):
        self.corpora, self.split, self.orders, self.blend, self.seq_len = corpora, split, orders, blend, seq_len
        self.first_sample, self.dp, self.chunk, self.skip_bad = first_sample, dp, chunk, skip_bad

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        stride = workers * self.dp
        windows = []
        for corpus, order in zip(self.corpora, self.orders):
            # Streams this worker touches (each holds a shard or two in memory).
            touched = self.chunk * order.streams // np.gcd(order.streams, stride * self.chunk)
            windows.append(ShardWindows(corpus, self.split, self.seq_len, capacity=2 * touched + 2,
                                        skip_bad=self.skip_bad))
        offsets = np.cumsum([0] + [len(w.shards) for w in windows])
        chunk_index = worker
        while True:
            first = self.first_sample + chunk_index * self.chunk * self.dp
            samples = [first + i * self.dp for i in range(self.chunk)]
            try:
                rows = np.stack([self._window(windows, g) for g in samples])
            except DataError as exc:
                yield ("error", str(exc))
                return
            bad = frozenset(int(offsets[source]) + shard for source, w in enumerate(windows) for shard in w.bad)
            yield ("ok", samples, rows, bad)
            chunk_index += workers

    def _window(self, windows: list[ShardWindows], sample: int) -> np.ndarray:
        source, own = self.blend.locate(sample)
        order = self.orders[source]
        return windows[source].window(order, order.address(own))


def _worker_init(_worker_id: int) -> None:
    """A loader worker leaves stop signals to its rank (which checkpoints first: they would
    otherwise kill the worker under it) and dies with the rank."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent(signal.SIGKILL)


# A SIGKILLed worker is gone within milliseconds; this only bounds the wait for one the kernel is slow to reap.
WORKER_EXIT_TIMEOUT_S = 5.0


class TrainBatches:
    """Micro-batches [mbs, seq_len + 1] (int64) for one data-parallel rank, from a global sample count,
    of one corpus or a mixture (megallm.data.mixture; `seed` also draws the blend's interleaving)."""

    def __init__(self, corpus: Corpus | Mixture, split: str, *, seq_len: int, micro_batch_size: int, streams: int,
                 seed: int, dp_rank: int, dp: int, consumed_samples: int, num_workers: int, prefetch: int,
                 skip_bad_shards: bool, device: torch.device):
        self.mixture = Mixture.of(corpus)
        self.orders = self.mixture.orders(split, seq_len, streams, seed)
        self.order = self.orders[0]  # the primary source's (the only one without a mixture)
        self.blend = self.mixture.blend(seed)
        if consumed_samples % dp:
            raise DataError(f"consumed samples {consumed_samples} is not a multiple of the {dp} data-parallel ranks")
        chunk = chunk_size(streams, dp, max(1, num_workers))
        dataset = RankSamples([s.corpus for s in self.mixture.sources], split, self.orders, self.blend, seq_len,
                              consumed_samples + dp_rank, dp, chunk, skip_bad_shards)
        # collate_fn=identity: workers send numpy arrays as they are (no tensor per item in shared memory).
        loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity,
                            prefetch_factor=max(2, prefetch // chunk) if num_workers else None,
                            persistent_workers=num_workers > 0, worker_init_fn=_worker_init)
        self._chunks: Iterator = iter(loader)
        self._pending: list[tuple[int, np.ndarray]] = []
        self.mbs, self.device = micro_batch_size, device
        self.skipped_shards: set[int] = set()
        self.last_samples: list[int] = []  # global indices of the last micro-batch's rows

    def _next(self) -> tuple[int, np.ndarray]:
        if not self._pending:
            item = next(self._chunks)
            if item[0] == "error":
                raise DataError(item[1])
            _, samples, rows, bad = item
            self.skipped_shards |= bad
            self._pending = list(zip(samples, rows))[::-1]
        return self._pending.pop()

    def next_micro_batch(self) -> torch.Tensor:
        rows = [self._next() for _ in range(self.mbs)]
        self.last_samples = [sample for sample, _ in rows]
        return token_batch([tokens for _, tokens in rows], self.device)

    def epoch(self, consumed_samples: int) -> float:
        """Passes over the data: for a mixture, over the source read most often relative to its size."""
        counts = self.blend.counts(consumed_samples)
        return max(count / order.epoch_samples for count, order in zip(counts, self.orders))

    def source_samples(self, consumed_samples: int) -> dict[str, int]:
        """Samples each source gave to the first `consumed_samples` (empty for one corpus)."""
        if not self.mixture.mixed:
            return {}
        return dict(zip(self.mixture.names, self.blend.counts(consumed_samples)))

    def close(self) -> None:
        """Stop the loader workers now; the batches cannot be read after. They ignore stop signals
        (`_worker_init`), so DataLoader's own shutdown, which ends with SIGTERM, can leave them
        running and Python's exit waiting for them forever: they get SIGKILL (they hold nothing
        to save), first taken off DataLoader's SIGCHLD watch, which would report them as failed."""
        chunks, self._chunks = self._chunks, iter(())
        workers = getattr(chunks, "_workers", [])  # a multi-process DataLoader iterator's
        if getattr(chunks, "_worker_pids_set", False):
            loader_signals._remove_worker_pids(id(chunks))
            chunks._worker_pids_set = False  # type: ignore[attr-defined]  # DataLoader's private multi-process flag
        for worker in workers:
            if worker.is_alive():
                worker.kill()
        for worker in workers:
            worker.join(timeout=WORKER_EXIT_TIMEOUT_S)
        if hasattr(chunks, "_shutdown_workers"):
            chunks._shutdown_workers()  # closes its queues; the workers are gone, so it waits for none


def token_batch(rows: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Windows -> one int64 batch [len(rows), seq_len + 1] on `device` (pinned for a CUDA copy)."""
    batch = torch.from_numpy(np.stack(rows).astype(np.int64))
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def _identity(item):
    return item


class EvalBatches:
    """Held-out micro-batches: the split's windows in manifest order, the same for every layout.

    Micro-batch `j` of data-parallel rank `r` holds samples `(j * dp + r) * mbs + [0, mbs)`
    (wrapping around a small split). Read in this process, shards cached.
    """

    def __init__(self, corpus: Corpus, split: str, *, seq_len: int, micro_batch_size: int, dp_rank: int, dp: int,
                 device: torch.device):
        shards = corpus.manifest.splits[split]
        self.order = SampleOrder([s.tokens for s in shards], seq_len, streams=1, seed=0, shuffle=False,
                                 where=f"split {split!r} of {corpus.location}")
        self.windows = ShardWindows(corpus, split, seq_len, capacity=len(shards), skip_bad=False)
        self.mbs, self.dp_rank, self.dp, self.device = micro_batch_size, dp_rank, dp, device

    def samples(self, index: int) -> list[int]:
        """The sample indices of micro-batch `index` of this rank."""
        first = (index * self.dp + self.dp_rank) * self.mbs
        return list(range(first, first + self.mbs))

    def micro_batch(self, index: int) -> torch.Tensor:
        rows = [self.windows.window(self.order, self.order.address(g)) for g in self.samples(index)]
        return token_batch(rows, self.device)
