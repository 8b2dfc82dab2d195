"""2:4 sparse linear + fused low-rank adapter (SLoPe) against dense layers, in the same run.

Baselines: dense ``nn.Linear`` + a separate LoRA (the thing a user replaces), the dense product without the adapter
(cuBLAS on a GPU, torch's CPU matmul otherwise; for the bare GEMM ratio), and on a GPU torch's semi-structured
sparse linear (``to_sparse_semi_structured``). Training: a double-pruned fwd+bwd step of the layer against the
dense layer's. Before timing, the output and every gradient are checked against the reference in fp32 at the
test suite's tolerances (``tests/tolerances.py``).
"""

import pytest
import torch
import torch.nn.functional as F
from shapes import linear_shapes, shape_id
from tolerances import assert_within_torch_error

import perfkern
from perfkern.ops import sparse24 as ops
from perfkern.reference import sparse24 as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
DENSE = "cuBLAS dense" if DEVICE == "cuda" else "torch dense (CPU)"
RANK = 16
# Backends that run every op the layer uses (the cpu backend has the sparse product only: it is benchmarked in
# bench_sparse24_cpu.py, and reaches the layer through auto).
LAYER_OPS = (ops.MM, ops.WEIGHT_GRAD, ops.COMPRESS, ops.DECOMPRESS, ops.GATHER, ops.MASK)
PROVIDERS = [
    b
    for b in perfkern.available_backends(DEVICE)
    if all(impls.has(b) for impls in LAYER_OPS) and not (DEVICE == "cpu" and b == "triton")
]


def _layer(n, k, adapter=True):
    layer = perfkern.SparseLoRALinear(k, n, rank=RANK, lazy=not adapter, device=DEVICE, dtype=DTYPE)
    with torch.no_grad():
        layer.lora_b.normal_(std=0.02)
    return layer


def _dense_lora(layer):
    """The same function as ``layer`` done densely: nn.Linear weights and a separate LoRA."""
    w = perfkern.sparsity.decompress_2to4(layer.values.detach(), layer.meta)
    a, b, s = layer.lora_a.detach(), layer.lora_b.detach(), layer.scale
    return w, lambda x: F.linear(x, w, layer.bias) + s * F.linear(F.linear(x, a), b)


def _semi_structured(w, bias):
    from torch.sparse import to_sparse_semi_structured

    try:
        sparse = to_sparse_semi_structured(w)
    except (RuntimeError, ValueError):
        return None
    return lambda x: F.linear(x, sparse, bias)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", linear_shapes(), ids=shape_id)
@torch.no_grad()
def test_forward(record, shape, provider):
    m, n, k = shape
    layer = _layer(n, k)
    x = torch.randn(m, k, device=DEVICE, dtype=DTYPE)
    w, dense_lora = _dense_lora(layer)
    with perfkern.use_backend(provider):
        truth = ref.sparse24_linear(x.float(), layer.values.float(), layer.meta, layer.bias.float(),
                                    layer.lora_a.float(), layer.lora_b.float(), layer.scale)  # fmt: skip
        assert_within_torch_error(layer(x), truth, dense_lora(x), "y")
        others = {f"{DENSE}, no adapter": lambda: F.linear(x, w, layer.bias)}
        if DEVICE == "cuda" and (semi := _semi_structured(w, layer.bias)) is not None:
            others["torch semi-structured, no adapter"] = lambda: semi(x)
        bare = _layer(n, k, adapter=False)
        bare.load_state_dict({**layer.state_dict(), "adapter_enabled": torch.tensor(False, device=DEVICE)})
        others["perfkern 2:4 without adapter"] = lambda: bare(x)
        record("sparse24_linear fwd", shape_id(shape), provider, lambda: layer(x),
               "dense nn.Linear + LoRA", lambda: dense_lora(x), others=others)  # fmt: skip


def _check_gradients(layer, x, grad):
    """Every gradient of one double-pruned step against the reference's in fp32, with the same math in plain
    PyTorch at the layer's dtype as the error yardstick."""
    w = ref.decompress_2to4(layer.values.detach(), layer.meta)
    w_bwd = ref.decompress_2to4(ref.gather_2to4(w.t().contiguous(), layer.bwd_meta), layer.bwd_meta)  # [K, N]
    a, b, s = layer.lora_a.detach(), layer.lora_b.detach(), layer.scale
    f32 = [t.float() for t in (grad, x.detach(), layer.values.detach())]
    truths = ref.sparse24_linear_backward(f32[0], f32[1], f32[2], layer.meta, a.float(), b.float(), s, None,
                                          layer.bwd_meta)  # fmt: skip
    dy_b = grad @ b
    natives = (grad @ w_bwd.t() + s * dy_b @ a, ref.gather_2to4(grad.t() @ x.detach(), layer.meta), grad.sum(0),
               s * dy_b.t() @ x.detach(), s * grad.t() @ (x.detach() @ a.t()))  # fmt: skip
    got = (x.grad, layer.values.grad, layer.bias.grad, layer.lora_a.grad, layer.lora_b.grad)
    for name, actual, truth, native in zip(("dx", "dvalues", "dbias", "dA", "dB"), got, truths, natives, strict=True):
        assert_within_torch_error(actual, truth, native, name)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", linear_shapes(), ids=shape_id)
def test_train_step(record, shape, provider):
    m, n, k = shape
    layer = _layer(n, k)
    w, _ = _dense_lora(layer)
    dense = torch.nn.Linear(k, n, device=DEVICE, dtype=DTYPE)
    with torch.no_grad():
        dense.weight.copy_(w)
    x = torch.randn(m, k, device=DEVICE, dtype=DTYPE, requires_grad=True)
    grad = torch.randn(m, n, device=DEVICE, dtype=DTYPE)

    def sparse_step():
        layer(x).backward(grad)

    def dense_step():
        dense(x).backward(grad)

    with perfkern.use_backend(provider):
        sparse_step()
        _check_gradients(layer, x, grad)
        record("sparse24_linear fwd+bwd (double)", shape_id(shape), provider, sparse_step,
               "dense nn.Linear fwd+bwd", dense_step)  # fmt: skip


WEIGHT_GRAD_PROVIDERS = [
    b for b in perfkern.available_backends(DEVICE) if ops.WEIGHT_GRAD.has(b) and not (DEVICE == "cpu" and b == "triton")
]


@pytest.mark.parametrize("provider", WEIGHT_GRAD_PROVIDERS)
@pytest.mark.parametrize("shape", [s for s in linear_shapes() if s[0] >= 128], ids=shape_id)
@torch.no_grad()
def test_weight_grad(record, shape, provider):
    """The compressed weight gradient alone, against cuBLAS dyᵀ·x into a dense [N, K] buffer and a gather (what
    the dense fallback does); TFLOP/s are dense-equivalent (2·M·N·K), as bench/NOTES.md predicts them."""
    m, n, k = shape
    dy = torch.randn(m, n, device=DEVICE, dtype=DTYPE)
    x = torch.randn(m, k, device=DEVICE, dtype=DTYPE)
    _, meta = perfkern.sparsity.compress_2to4(torch.randn(n, k, device=DEVICE), strict=False)
    out = torch.empty(n, k // 2, device=DEVICE, dtype=DTYPE)
    with perfkern.use_backend(provider):
        got = torch.ops.perfkern.sparse24_weight_grad(dy, x, meta)
        want = perfkern.reference.sparse24.gather_2to4(dy.float().t() @ x.float(), meta)
        torch.testing.assert_close(got.float(), want, atol=5e-2 * m**0.5, rtol=5e-2)
        record("sparse24_weight_grad", shape_id(shape), provider,
               lambda: torch.ops.perfkern.sparse24_weight_grad(dy, x, meta),
               "cuBLAS dense dyᵀ·x + gather", lambda: ops._dense_weight_grad(dy, x, meta, out),
               flops=2.0 * m * n * k)  # fmt: skip
