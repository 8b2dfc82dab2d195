"""The CPU 2:4 product (the core's CPU kernels, ``perfkern_sparse24_mm_cpu``) against three baselines measured in
the same run: ``torch.nn.functional.linear`` on the decompressed weight, the dense kernel of the same code (same
SIMD, same threads: what sparsity itself buys) and the floor, the 2:4 bytes read (values + metadata) over the
machine's read bandwidth, itself measured in the same rounds. At M = 128 the ``auto`` row is what a user gets:
the measured choice among the kernel, dense and the reference.

Timings are medians over many repetitions, the providers interleaved round-robin so that a load change on a
shared machine hits them alike. ``PERFKERN_BENCH_CPU=full`` runs the shapes of the CPU targets (LLaMA's 4096x4096
and 11008x4096; ``bash scripts/cpu_bench.sh`` writes bench/results/cpu-<machine>-<date>.json and prints the table);
otherwise a small set that CI times in seconds.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from shapes import shape_id
from timing import cpu_machine

import perfkern
from perfkern import _ext
from perfkern.ops import sparse24 as ops
from perfkern.reference import sparse24 as ref

pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU kernels' benchmark runs on a CPU machine"),
    pytest.mark.skipif(_ext.cpu_unavailable_reason() is not None, reason="perfkern._C is not built"),
]

FULL = os.environ.get("PERFKERN_BENCH_CPU", "") == "full"
WEIGHTS = [(4096, 4096), (11008, 4096)] if FULL else [(1024, 1024)]
TOKENS = [1, 8, 128] if FULL else [1, 8]
DTYPES = [torch.float32, torch.bfloat16]
# Weight rows of the in-cache measurement: at K = 4096 fp32, a dense slice of 16 MiB and a 2:4 one of 8.5 MiB,
# which stay together in a 32 MiB L3, and enough work per call (about 0.2 ms) that the fixed cost of a call
# (tens of microseconds: the thread pool's wake-up, x's preparation) weighs little in the ratio.
HOT_ROWS = 1024


def interleaved_ms(fns: dict, reps: int, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds of each function, timed round-robin (one call of each per round)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


@pytest.fixture(scope="module")
def read_probe() -> tuple:
    """A large read (torch's sum of a 256 MiB fp32 tensor on torch's threads) and its bytes: timed in the same
    rounds as the providers, so that the floor is measured under the same load as the kernel it judges. It also
    flushes the caches between calls, as a model's other layers do: every provider reads its weight from memory."""
    src = torch.ones(64 << 20)
    assert src.sum().item() == src.numel()
    return (lambda: src.sum()), src.numel() * 4


def _dense_kernel(x, w, out):
    return lambda: ops._ext.require_cpu().dense_mm_cpu(
        x=x.data_ptr(), w=w.data_ptr(), bias=0, lora_t=0, lora_b=0, out=out.data_ptr(), m=x.shape[0],
        n=w.shape[0], k=x.shape[1], r=0, scale=1.0, x_row_stride=x.stride(0), w_row_stride=w.stride(0),
        bias_stride=0, t_stride0=0, t_stride1=0, b_stride0=0, b_stride1=0, out_row_stride=out.stride(0),
        dtype=_ext.DTYPE_CODES[x.dtype], num_threads=torch.get_num_threads(), isa=0,
    )  # fmt: skip


def _sparse_kernel(x, values, meta, out):
    return lambda: ops._ext.require_cpu().sparse24_mm_cpu(
        x=x.data_ptr(), values=values.data_ptr(), meta=meta.data_ptr(), bias=0, lora_t=0, lora_b=0,
        out=out.data_ptr(), m=x.shape[0], n=values.shape[0], k=x.shape[1], r=0, scale=1.0,
        x_row_stride=x.stride(0), values_row_stride=values.stride(0), meta_row_stride=meta.stride(0), bias_stride=0,
        t_stride0=0, t_stride1=0, b_stride0=0, b_stride1=0, out_row_stride=out.stride(0),
        dtype=_ext.DTYPE_CODES[x.dtype], num_threads=torch.get_num_threads(), isa=0,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("m", TOKENS, ids=lambda m: f"M{m}")
@pytest.mark.parametrize("weight", WEIGHTS, ids=shape_id)
@torch.no_grad()
def test_cpu_sparse_mm(benchmark, read_probe, weight, m, dtype):
    n, k = weight
    torch.manual_seed(0)
    w = torch.randn(n, k)
    values, meta = ref.compress_2to4(w * ref.mask_2to4(w))
    values = values.to(dtype)
    dense_w = ref.decompress_2to4(values, meta).contiguous()
    x = torch.randn(m, k, dtype=dtype)
    out = torch.empty(m, n, dtype=dtype)
    out_dense = torch.empty(m, n, dtype=dtype)

    def sparse():
        ops._cpu_mm(x, values, meta, None, None, None, 1.0, out)

    fns = {"kernel": sparse, "F.linear": lambda: F.linear(x, dense_w)}
    # The two kernels compared as they are called, straight into the core (no op-level Python on either side).
    fns["own dense"] = _dense_kernel(x, dense_w, out_dense)
    fns["kernel, direct"] = _sparse_kernel(x, values, meta, out)
    auto_backend = None
    if m >= 128:
        perfkern.sparse24_linear(x, values, meta)  # auto measures this shape (and the steady weight's) here
        perfkern.sparse24_linear(x, values, meta)
        auto_backend = perfkern.last_backend("sparse24_mm")
        fns["auto"] = lambda: perfkern.sparse24_linear(x, values, meta)

    # Correctness before timing, at the tolerances of the tests (the kernel's error at most twice torch's).
    sparse()
    fns["own dense"]()
    truth = x.float() @ dense_w.float().t()
    for name, got in (("kernel", out), ("own dense", out_dense)):
        theirs = (F.linear(x, dense_w).float() - truth).abs().max().item()
        ours = (got.float() - truth).abs().max().item()
        floor = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}[dtype] * max(1.0, truth.abs().max().item())
        assert ours <= 2 * theirs + floor, f"{name}: error {ours:.3g} > 2 x torch's {theirs:.3g} + {floor:.3g}"

    reps = 40 if m < 128 else 7
    probe, probe_bytes = read_probe
    ms = interleaved_ms({**fns, "read probe": probe}, reps)
    read_bandwidth = probe_bytes / (ms["read probe"] / 1e3)
    # Both kernels on the first HOT_ROWS rows of the weight, which stay in cache between calls (each called
    # directly, without the op's Python): what they cost when the weight's bytes are free. Their ratio bounds the
    # one above by compute alone.
    hot = {}
    if m < 128:
        hot_out = torch.empty(m, HOT_ROWS, dtype=dtype)
        hot = interleaved_ms(
            {"kernel": _sparse_kernel(x, values[:HOT_ROWS], meta[:HOT_ROWS], hot_out),
             "own dense": _dense_kernel(x, dense_w[:HOT_ROWS], hot_out)},
            reps=100,
        )  # fmt: skip
    sparse_bytes = values.numel() * values.element_size() + meta.numel() * meta.element_size()
    floor_ms = sparse_bytes / read_bandwidth * 1e3
    others = {
        "own dense kernel (both called directly)": {
            "ms": ms["own dense"], "speedup": ms["own dense"] / ms["kernel, direct"]},  # fmt: skip
        "floor (2:4 bytes / read bandwidth)": {"ms": floor_ms, "speedup": floor_ms / ms["kernel"]},
    }
    if hot:
        others[f"own dense kernel, both on {HOT_ROWS} rows in cache"] = {
            "ms": hot["own dense"], "speedup": hot["own dense"] / hot["kernel"]}  # fmt: skip
    if "auto" in ms:
        others[f"auto ({auto_backend}) vs F.linear"] = {"ms": ms["auto"], "speedup": ms["F.linear"] / ms["auto"]}
    benchmark.extra_info.update(
        op=f"cpu 2:4 mm {str(dtype).removeprefix('torch.')}", shape=f"{m}x{n}x{k}", provider="cpu kernel",
        ms=ms["kernel"], device=cpu_machine(), torch=torch.__version__, threads=torch.get_num_threads(),
        isa=_ext.require_cpu().cpu_isa(), baseline="F.linear (dense weight)", baseline_ms=ms["F.linear"],
        speedup=ms["F.linear"] / ms["kernel"], gbps=sparse_bytes / ms["kernel"] / 1e6,
        floor_ms=floor_ms, floor_fraction=floor_ms / ms["kernel"], read_gbps=read_bandwidth / 1e9,
        own_dense_ms=ms["own dense"], direct_ms=ms["kernel, direct"],
        vs_own_dense=ms["own dense"] / ms["kernel, direct"], others=others,
        auto_backend=auto_backend, auto_ms=ms.get("auto"), hot_rows=HOT_ROWS if hot else None,
        hot_ms=hot.get("kernel"), hot_own_dense_ms=hot.get("own dense"),
        hot_vs_own_dense=hot["own dense"] / hot["kernel"] if hot else None,
        auto_vs_linear=ms["F.linear"] / ms["auto"] if "auto" in ms else None, reps=reps,
    )  # fmt: skip
    benchmark.pedantic(sparse, rounds=3, iterations=1, warmup_rounds=1)
