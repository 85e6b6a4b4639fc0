"""Tokens/s, MFU against a known peak, ETA, and the device peak table."""

from __future__ import annotations

import json
import math

import pytest
import torch

from megallm.metrics.format import format_console, format_duration
from megallm.metrics.step_timer import StepTimer
from megallm.metrics.throughput import Throughput, device_peak_flops, peak_flops


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_mfu_against_a_known_peak():
    clock = Clock()
    # 6 MFLOP per token, 2 devices of 1 TFLOP/s each.
    throughput = Throughput(flops_per_token=6_000_000, peak_flops_per_device=1e12, world_size=2, clock=clock)
    throughput.add(1, 4096)
    throughput.add(1, 4096)
    clock.now += 0.5
    report = throughput.report(steps_left=10)
    assert report["tokens_per_s"] == pytest.approx(8192 / 0.5)
    assert report["mfu"] == pytest.approx(16384 * 6e6 / 2e12)  # 0.049152
    assert report["tflops_per_device"] == pytest.approx(16384 * 6e6 / 2 / 1e12)
    assert report["step_time_s"] == pytest.approx(0.25) and report["eta_s"] == pytest.approx(2.5)
    # The next report covers only the interval since this one.
    throughput.add(1, 1000)
    clock.now += 2.0
    assert throughput.report(steps_left=0)["tokens_per_s"] == pytest.approx(500.0)


def test_no_mfu_where_the_peak_is_unknown():
    clock = Clock()
    throughput = Throughput(flops_per_token=1000, peak_flops_per_device=None, world_size=4, clock=clock)
    throughput.add(1, 10)
    clock.now += 1.0
    assert throughput.report(steps_left=1)["mfu"] is None
    assert device_peak_flops(torch.device("cpu"), "bf16") is None


@pytest.mark.parametrize("name,precision,tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
    ("NVIDIA H100 PCIe", "bf16", 756.0),  # the more specific name wins over "H100"
    ("NVIDIA H200", "bf16", 989.0),
    ("NVIDIA A100-SXM4-80GB", "fp32", 19.5),
    ("Tesla T4", "bf16", None),
])
def test_peak_table_by_device_name(name, precision, tflops):
    peak = peak_flops(name, precision)
    assert peak == (tflops * 1e12 if tflops else None)


def test_console_line_shows_mfu_and_eta():
    record = {"kind": "train", "step": 5, "total_steps": 10, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.5,
              "tokens_per_s": 16384.0, "mfu": 0.049152, "epoch": 0.1, "peak_mem_gib": 1.5, "eta_s": 3725}
    line = format_console(record)
    assert "mfu 4.9%" in line and "16,384 tok/s" in line and line.endswith("eta 1h02m")
    assert format_duration(61) == "1m01s"


def test_step_timer_reports_milliseconds_per_step_and_resets(monkeypatch):
    clock = iter([0.0, 0.5, 1.0, 1.25, 2.0, 3.0])  # perf_counter readings: enter / exit of each phase
    monkeypatch.setattr("megallm.metrics.step_timer.time.perf_counter", lambda: next(clock))
    timer = StepTimer(torch.device("cpu"))
    with timer.phase("data", device=False):
        pass
    with timer.phase("forward_backward"):
        pass
    with timer.phase("forward_backward"):
        pass
    assert timer.report(steps=2) == {"data_ms": 250.0, "forward_backward_ms": 625.0}
    assert timer.report(steps=1) == {}


def test_records_without_numbers_read_and_stay_strict_json():
    """A step that updated nothing has loss None; a NaN grad norm is written as null, never as bare NaN."""
    from megallm.train.callbacks.loggers import strict_json

    record = {"kind": "train", "step": 3, "total_steps": 6, "loss": None, "lr": 1e-3, "grad_norm": math.nan,
              "tokens_per_s": 10.0, "eta_s": 1.0}
    assert "loss n/a" in format_console(record) and "grad_norm nan" in format_console(record)
    line = strict_json(record)
    assert json.loads(line)["grad_norm"] is None and "NaN" not in line
    event = {"kind": "nonfinite", "step": 3, "grad_norm": None, "samples": [8, 12], "policy": "skip"}
    assert format_console(event) == "nonfinite step 3 | grad_norm None | samples [8, 12] | policy skip"
    downstream = {"kind": "downstream", "step": 100, "fortune_category/accuracy": 0.08695652173913043,
                  "seconds": 3.25, "tokens_seen": 409600}
    assert format_console(downstream) == ("downstream step 100 | fortune_category/accuracy 0.08696 | seconds 3.25 | "
                                          "tokens_seen 409600")
