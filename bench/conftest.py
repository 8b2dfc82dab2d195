import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# The correctness checks before timing use the test suite's tolerances (tests/tolerances.py), so the benchmarks
# and the tests never hold a kernel to different standards.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from timing import device_name, measure_ms, synced  # noqa: E402


@pytest.fixture
def record(benchmark):
    """Time ``fn`` and ``baseline_fn`` side by side, store both and their ratio in ``extra_info``, then hand ``fn``
    to pytest-benchmark."""

    def run(op: str, shape: str, provider: str, fn, baseline: str | None, baseline_fn, bytes_moved: int | None = None,
            others: dict | None = None, flops: float | None = None):  # fmt: skip
        """``others``: more baselines {name: fn}, each timed here too; their speedups go to extra_info["others"].
        ``baseline=None`` records a measurement with nothing to compare (the floors)."""
        ms = measure_ms(fn)
        benchmark.extra_info.update(op=op, shape=shape, provider=provider, ms=ms, device=device_name(),
                                    torch=torch.__version__)  # fmt: skip
        if baseline is not None:
            baseline_ms = measure_ms(baseline_fn)
            benchmark.extra_info.update(baseline=baseline, baseline_ms=baseline_ms, speedup=baseline_ms / ms)
        if flops is not None:
            benchmark.extra_info["tflops"] = flops / ms / 1e9
        if bytes_moved is not None:
            benchmark.extra_info["gbps"] = bytes_moved / ms / 1e6
        if others:
            timed = {name: measure_ms(other) for name, other in others.items()}
            benchmark.extra_info["others"] = {name: {"ms": t, "speedup": t / ms} for name, t in timed.items()}
        rounds = 20 if torch.cuda.is_available() else 3
        benchmark.pedantic(synced(fn), rounds=rounds, iterations=1, warmup_rounds=1)

    return run
