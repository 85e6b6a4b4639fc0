"""Progress of a prepare: a line at most every `every` seconds, and a summary at the end.

Rates count only units tokenized in this run (units an earlier run finished cost no
time). The ETA divides the input bytes left by the input bytes per second so far.
"""

from __future__ import annotations

import time
from typing import Callable

from megallm.data.units import UnitResult
from megallm.metrics.format import format_duration


class Progress:
    def __init__(self, units: int, size: int, workers: int, log: Callable[[str], None],
                 every: float = 5.0, clock: Callable[[], float] = time.perf_counter):
        self.units, self.size, self.workers, self.log, self.every, self.clock = units, size, workers, log, every, clock
        self.start = self.last_line = clock()
        self.done = self.skipped = self.tokens = self.bytes_done = self.bytes_tokenized = 0

    def update(self, result: UnitResult) -> None:
        self.done += 1
        self.bytes_done += result.size
        if result.skipped:
            self.skipped += 1
        else:
            self.tokens += result.tokens
            self.bytes_tokenized += result.size
        now = self.clock()
        if now - self.last_line >= self.every and self.done < self.units:
            self.last_line = now
            elapsed = now - self.start
            eta = (self.size - self.bytes_done) * elapsed / max(self.bytes_tokenized, 1)
            self.log(f"units {self.done}/{self.units} | {self.tokens:,} tokens | "
                     f"{self.tokens / elapsed:,.0f} tokens/s | eta {format_duration(eta)}")

    def summary(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.tokens / elapsed
        skipped = f" ({self.skipped} done by an earlier run)" if self.skipped else ""
        return (f"tokenized {self.done - self.skipped} of {self.units} units{skipped}: {self.tokens:,} tokens in "
                f"{elapsed:.1f}s, {rate:,.0f} tokens/s, {rate / self.workers:,.0f} tokens/s per worker "
                f"({self.workers} worker processes)")
