"""Timing shared by every benchmark: CUDA events on a GPU (L2 flushed before each repetition, median over
repetitions), wall-clock medians on the CPU. Ratios are always of two timings taken here, in the same run."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

_flush: torch.Tensor | None = None


def _flush_l2() -> None:
    global _flush
    if _flush is None:
        _flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    _flush.zero_()


def measure_ms(fn: Callable[[], object], reps: int = 20, warmup: int = 3) -> float:
    """Median time of one call of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        times = []
        for _ in range(max(3, reps // 4)):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends, strict=True):
        _flush_l2()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))


def synced(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` followed by a device sync, so pytest-benchmark's wall clock covers the GPU work."""
    if not torch.cuda.is_available():
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize()
        return out

    return call


def cpu_machine() -> str:
    """The CPU's model name and core count, e.g. "AMD EPYC, 2 cores"."""
    model = "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return cpu_machine()
