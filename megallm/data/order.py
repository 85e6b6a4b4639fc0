"""The global sample order of a run: which packed sequence is sample `g`, for any layout.

Each shard is packed on its own into `tokens // (seq_len + 1)` windows (its leftover
tokens, fewer than one window, are not used). An epoch lists every window: shards in a
permutation drawn from (seed, epoch), and within each shard its windows in a permutation
drawn from (seed, epoch, shard) — a shuffle buffer of one whole shard, which, unlike a
running buffer, needs no history to resume.

The epoch's list is cut into `streams` equal contiguous ranges; global sample `g` is
taken from the streams round-robin: stream `g % streams`, its next window. A batch so
draws from `streams` distant parts of the corpus at once, while each stream reads its
shards sequentially. Epochs hold `streams * (windows // streams)` samples: fewer than
`streams` windows are left out of each epoch (different ones every epoch).

Sample `g` is a pure function of `g`, the shard sizes, `seq_len`, `streams` and the seed:
not of the number of data-parallel ranks or loader workers. A checkpoint therefore only
stores the count of consumed samples, resumes in constant time, and may resume with
another number of ranks.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from megallm.errors import DataError


class Address(NamedTuple):
    epoch: int
    shard: int  # index into the split's shard list (manifest order)
    window: int  # window index within that shard


class SampleOrder:
    def __init__(self, shard_tokens: list[int], seq_len: int, streams: int, seed: int, shuffle: bool = True,
                 where: str = "the corpus"):
        self.windows = np.array([t // (seq_len + 1) for t in shard_tokens], dtype=np.int64)
        self.streams, self.seed, self.shuffle = streams, seed, shuffle
        total = int(self.windows.sum())
        self.per_stream = total // streams
        if self.per_stream == 0:
            if streams == 1:  # validation reads one stream: data.streams is not the cause
                raise DataError(f"{where} holds no sequence of {seq_len + 1} tokens (train.seq_len + 1); "
                                "add text or lower train.seq_len")
            raise DataError(
                f"{where} holds {total} sequence(s) of {seq_len + 1} tokens, fewer than data.streams={streams}; "
                "add text, lower train.seq_len or lower data.streams"
            )
        self.epoch_samples = self.per_stream * streams
        self.left_out_per_epoch = total - self.epoch_samples
        self._make_caches()

    def _make_caches(self) -> None:
        self._shard_order = lru_cache(maxsize=4)(self._make_shard_order)
        self._window_order = lru_cache(maxsize=1024)(self._make_window_order)

    def __getstate__(self) -> dict:  # loader workers may be spawned: send the numbers, not the caches
        return {k: v for k, v in self.__dict__.items() if k not in ("_shard_order", "_window_order")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._make_caches()

    def _make_shard_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard indices in this epoch's order, cumulative window counts along that order)."""
        n = len(self.windows)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        return order, np.cumsum(self.windows[order])

    def _make_window_order(self, epoch: int, shard: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, shard]).permutation(int(self.windows[shard]))

    def stream(self, sample: int) -> int:
        return (sample % self.epoch_samples) % self.streams

    def address(self, sample: int) -> Address:
        epoch, offset = divmod(sample, self.epoch_samples)
        stream, step = offset % self.streams, offset // self.streams
        position = stream * self.per_stream + step  # in the epoch's list of windows
        order, cumulative = self._shard_order(epoch)
        slot = int(np.searchsorted(cumulative, position, side="right"))
        shard = int(order[slot])
        within = position - int(cumulative[slot] - self.windows[shard])
        window = int(self._window_order(epoch, shard)[within]) if self.shuffle else within
        return Address(epoch, shard, window)

    def substitute(self, address: Address, unusable: set[int]) -> Address:
        """The same window index in the next usable shard of the epoch's order (skipped shards)."""
        order, _ = self._shard_order(address.epoch)
        slot = int(np.flatnonzero(order == address.shard)[0])
        for step in range(1, len(order) + 1):
            shard = int(order[(slot + step) % len(order)])
            if shard not in unusable and self.windows[shard] > 0:
                return Address(address.epoch, shard, address.window % int(self.windows[shard]))
        raise DataError("every shard of the split is unreadable; check data.path and run tools/validate_data.py")
