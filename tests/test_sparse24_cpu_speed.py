"""CI's guard on the CPU kernel's speed (issue: a regression must not land silently): at decode, M = 1, fp32, a
4096 x 4096 2:4 weight, the cpu kernel beats ``torch.nn.functional.linear`` on the dense weight by at least 1.2x.

Both run on one thread and are timed by that thread's CPU time, so a CI machine shared with other jobs, which
delays a thread by whole scheduler slices (and a two-thread call by its slower thread), does not decide the
outcome: on such a machine wall-clock medians of either swing by 2x. The physical limit is 1.88x (the bytes
read); the margin, medians of many calls timed round-robin, and up to three attempts (the best ratio counts)
absorb the rest. A kernel that has really slowed down fails all three (the scalar kernel, forced, runs at
0.6x). Wall-clock, multi-threaded ratios are the benchmark's job (bench/bench_sparse24_cpu.py)."""

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from perfkern import _ext
from perfkern.ops import sparse24 as ops
from perfkern.reference import sparse24 as ref

pytestmark = pytest.mark.skipif(_ext.cpu_unavailable_reason() is not None, reason="perfkern._C is not built")

MIN_SPEEDUP = 1.2
ROUNDS = 30
ATTEMPTS = 3


def speedup_over_linear(kernel, linear, rounds: int = ROUNDS) -> float:
    """Median CPU time of ``linear`` over that of ``kernel`` on the calling thread, the two called alternately."""
    for _ in range(3):
        kernel()
        linear()
    ours, theirs = [], []
    for _ in range(rounds):
        start = time.thread_time()
        kernel()
        ours.append(time.thread_time() - start)
        start = time.thread_time()
        linear()
        theirs.append(time.thread_time() - start)
    return statistics.median(theirs) / statistics.median(ours)


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # F.linear's and, through torch.get_num_threads, the kernel's
    yield
    torch.set_num_threads(previous)


@torch.no_grad()
def test_decode_kernel_beats_f_linear(one_thread):
    torch.manual_seed(0)
    w = torch.randn(4096, 4096)
    values, meta = ref.compress_2to4(w * ref.mask_2to4(w))
    dense = ref.decompress_2to4(values, meta)
    x = torch.randn(1, 4096)
    out = torch.empty(1, 4096)

    def kernel():
        ops._cpu_mm(x, values, meta, None, None, None, 1.0, out)

    kernel()
    torch.testing.assert_close(out, F.linear(x, dense), atol=1e-3, rtol=1e-4)
    ratios = []
    for _ in range(ATTEMPTS):
        ratios.append(speedup_over_linear(kernel, lambda: F.linear(x, dense)))
        if ratios[-1] >= MIN_SPEEDUP:
            return
    pytest.fail(
        f"the M=1 fp32 4096x4096 cpu kernel ran {max(ratios):.2f}x F.linear at best (attempts: "
        f"{', '.join(f'{r:.2f}x' for r in ratios)}), below the {MIN_SPEEDUP}x CI floor "
        f"({_ext.require_cpu().cpu_isa()} kernels, one thread, CPU time)"
    )
