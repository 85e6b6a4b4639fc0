"""Tokens per second, model FLOPs utilisation, ETA and peak memory.

MFU = achieved model FLOP/s / the devices' dense peak (PaLM's definition), with the
FLOPs per token from megallm.model.flops. Peaks are keyed by device name; a device not
in the table (any CPU) reports no MFU rather than a guess.
"""

from __future__ import annotations

import resource
import time
from typing import Callable, Optional

import torch

# Dense (no sparsity) peak TFLOP/s by precision, from the vendors' data sheets.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp32": 67.0},
    "H100 SXM": {"bf16": 989.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp32": 91.6},
}


def peak_flops(device_name: str, precision: str) -> Optional[float]:
    """Dense peak FLOP/s of a device by its name (torch.cuda.get_device_name), None when unknown."""
    for key, peaks in PEAK_TFLOPS.items():  # most specific names first
        if key in device_name:
            return peaks[precision] * 1e12
    return None


def device_peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """Peak FLOP/s of one device, or None when unknown (any CPU)."""
    if device.type != "cuda":
        return None
    return peak_flops(torch.cuda.get_device_name(device), precision)


def peak_memory_bytes(device: torch.device) -> int:
    """This process's peak: allocated GPU memory on CUDA, resident set size (RSS) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class Throughput:
    """Tokens/s, step time, MFU and ETA over the interval between `report` calls.

    MFU = tokens/s x FLOPs per token / (peak FLOP/s per device x devices); None when the
    peak is unknown.
    """

    def __init__(self, flops_per_token: int, peak_flops_per_device: Optional[float], world_size: int,
                 clock: Callable[[], float] = time.perf_counter):
        self.flops_per_token, self.clock, self.world = flops_per_token, clock, world_size
        self.peak_total = peak_flops_per_device * world_size if peak_flops_per_device else None
        self._start, self._steps, self._tokens = clock(), 0, 0

    def add(self, steps: int, tokens: int) -> None:
        self._steps += steps
        self._tokens += tokens

    def report(self, steps_left: int) -> dict:
        now = self.clock()
        elapsed = max(now - self._start, 1e-9)
        tokens_per_s = self._tokens / elapsed
        step_time = elapsed / max(self._steps, 1)
        flops = tokens_per_s * self.flops_per_token  # over all devices
        mfu = flops / self.peak_total if self.peak_total else None
        self._start, self._steps, self._tokens = now, 0, 0
        return {"tokens_per_s": tokens_per_s, "step_time_s": step_time, "tflops_per_device": flops / self.world / 1e12,
                "mfu": mfu, "eta_s": steps_left * step_time}
