"""The bare 2:4 GEMM, kernel by kernel: out = x·Wsᵀ (+ s·T·Bᵀ, r = 16), each sparse kernel pinned (CUDA mma.sp,
CUDA wgmma.sp on sm_90, Triton), against cuBLAS dense ``torch.mm`` on the decompressed weight and torch's
semi-structured sparse GEMM (cuSPARSELt and CUTLASS) in the same run. The "with adapter" rows compare the
fused low-rank term with the same kernel without it (bench/NOTES.md targets: at most 1.05x its time). Before
timing, each output is checked against fp32 at the test suite's tolerances (``tests/tolerances.py``). GPU only: on
a CPU every case is skipped (the reference has its own benchmarks in bench_sparse24_linear.py).
"""

import pytest
import torch
import torch.nn.functional as F
from shapes import LLAMA_WEIGHTS, shape_id
from tolerances import assert_within_torch_error

import perfkern
from perfkern.ops import sparse24 as ops
from perfkern.reference import sparse24 as ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="sparse tensor-core kernels need a GPU")

DTYPE = torch.bfloat16
RANK = 16
TOKENS = [16, 2048, 8192]


def _providers() -> list[str]:
    if not torch.cuda.is_available():
        return []
    names = []
    if "cuda" in perfkern.available_backends("cuda"):
        names.append("cuda:mma.sp")
        if torch.cuda.get_device_capability() == (9, 0):
            names.append("cuda:wgmma.sp")
    if "triton" in perfkern.available_backends("cuda"):
        names.append("triton")
    return names


def _gemm(provider, x, values, meta, lora_t, lora_b, scale):
    """A call of the pinned kernel writing into its own preallocated output, and that output."""
    out = torch.empty(x.shape[0], values.shape[0], device=x.device, dtype=x.dtype)
    if provider == "triton":
        from perfkern.kernels import sparse24 as tk

        return (lambda: tk.mm(x, values, meta, None, lora_t, lora_b, scale, out)), out
    kernel = ops.CUDA_MM_KERNELS[provider.removeprefix("cuda:")]
    return (lambda: ops._cuda_mm(x, values, meta, None, lora_t, lora_b, scale, out, kernel=kernel)), out


def _semi_structured(w):
    """torch's semi-structured GEMM, per backend that accepts this weight: {name: weight subclass}."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    found = {}
    for name, force_cutlass in (("cuSPARSELt", False), ("CUTLASS", True)):
        previous = SparseSemiStructuredTensor._FORCE_CUTLASS
        SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
        try:
            found[name] = to_sparse_semi_structured(w)
        except (RuntimeError, ValueError):
            pass
        finally:
            SparseSemiStructuredTensor._FORCE_CUTLASS = previous
    return found


@pytest.mark.parametrize("adapter", [False, True], ids=["bare", "lora16"])
@pytest.mark.parametrize("provider", _providers())
@pytest.mark.parametrize("m", TOKENS)
@pytest.mark.parametrize("weight", LLAMA_WEIGHTS, ids=shape_id)
@torch.no_grad()
def test_gemm(record, weight, m, provider, adapter):
    n, k = weight
    w = torch.randn(n, k, device="cuda", dtype=DTYPE)
    values, meta = ref.compress_2to4(w * ref.mask_2to4(w))
    dense_w = ref.decompress_2to4(values, meta)
    x = torch.randn(m, k, device="cuda", dtype=DTYPE)
    lora_t = torch.randn(m, RANK, device="cuda", dtype=DTYPE) if adapter else None
    lora_b = torch.randn(n, RANK, device="cuda", dtype=DTYPE) * 0.02 if adapter else None
    fn, out = _gemm(provider, x, values, meta, lora_t, lora_b, 0.5)
    fn()
    truth = x.float() @ dense_w.float().t() + (0.5 * lora_t.float() @ lora_b.float().t() if adapter else 0)
    native = F.linear(x, dense_w) + (0.5 * lora_t @ lora_b.t() if adapter else 0)
    assert_within_torch_error(out, truth, native, "out")
    others = {}
    if adapter:
        others["same kernel without adapter"] = _gemm(provider, x, values, meta, None, None, 1.0)[0]
    else:
        for name, sparse in _semi_structured(dense_w).items():
            try:  # some backends reject some token counts; those rows simply lack that comparison
                F.linear(x, sparse)
            except (RuntimeError, ValueError):
                continue
            others[f"torch semi-structured ({name})"] = lambda s=sparse: F.linear(x, s)
    op = "2:4 GEMM + lora16" if adapter else "2:4 GEMM"
    record(op, f"{m}x{n}x{k}", provider, fn, "cuBLAS dense torch.mm", lambda: torch.mm(x, dense_w.t()),
           others=others, flops=2.0 * m * n * k)  # fmt: skip
