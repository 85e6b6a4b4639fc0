"""Where a training step's time goes: waiting for data, forward + backward, optimizer.

Host phases (`device=False`, the data wait) are timed with the host clock. Device phases
are timed on the device: on CUDA with a pair of CUDA events per phase, recorded in the
stream and read only when a report is made (the events of a report's interval are then
complete after one synchronisation), so timing adds no host-device sync to a step; on
CPU, where work is synchronous, with the host clock.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterator

import torch


class StepTimer:
    """Accumulates seconds per named phase between reports."""

    def __init__(self, device: torch.device):
        self.on_cuda = device.type == "cuda"
        self._seconds: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def phase(self, name: str, device: bool = True) -> Iterator[None]:
        """Time the block as phase `name`: on the device (default) or on the host clock."""
        if device and self.on_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
            return
        began = time.perf_counter()
        yield
        self._seconds[name] += time.perf_counter() - began

    def report(self, steps: int) -> dict[str, float]:
        """Milliseconds per step of each phase since the last report ({phase}_ms); waits for the device."""
        if self._events:
            self._events[-1][2].synchronize()
        for name, start, end in self._events:
            self._seconds[name] += start.elapsed_time(end) / 1000
        report = {f"{name}_ms": 1000 * seconds / max(steps, 1) for name, seconds in self._seconds.items()}
        self._seconds.clear()
        self._events.clear()
        return report
