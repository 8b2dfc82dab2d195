"""PERA adapter (DESIGN §3.4): perfkern's fused op against the naive PyTorch implementation (materialised Â and
B̂, two F.linear) and against plain LoRA at the same rank, forward and forward+backward, in the same run. Before
timing, the output and every gradient are checked against the fp64 reference at the test suite's tolerances
(``tests/tolerances.py``), with the naive implementation as the error yardstick."""

import pytest
import torch
import torch.nn.functional as F
from shapes import pera_shapes, shape_id
from tolerances import assert_within_torch_error

import perfkern
from perfkern.ops import pera as ops
from perfkern.reference import pera as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
MODE = "full"
PROVIDERS = [
    b for b in perfkern.available_backends(DEVICE) if ops.ADAPTER.has(b) and not (DEVICE == "cpu" and b == "triton")
]


def _inputs(m, n, k, r, requires_grad):
    x = torch.randn(m, k, device=DEVICE, dtype=DTYPE)
    a = torch.randn(r, k, device=DEVICE, dtype=DTYPE) / k**0.5
    b = torch.randn(n, r, device=DEVICE, dtype=DTYPE) / r**0.5
    h = torch.randn(ref.num_pairs(r, MODE), device=DEVICE, dtype=DTYPE)
    return [t.requires_grad_(requires_grad) for t in (x, a, b, h)]


def _naive(x, a, b, h, scale=1.0):
    i, j = ref.pairs(a.shape[0], MODE, a.device)
    a_hat = torch.cat([a, h.unsqueeze(1) * a[i] * a[j]])
    b_hat = torch.cat([b, b[:, i] * b[:, j]], dim=1)
    return scale * F.linear(F.linear(x, a_hat), b_hat)


def _lora(x, a, b, h, scale=1.0):
    return scale * F.linear(F.linear(x, a), b)


def _fused(x, a, b, h, scale=1.0):
    return perfkern.pera_adapter(x, a, b, h, scale, MODE)


def _step(fn, inputs, grad):
    def run():
        for t in inputs:
            t.grad = None
        fn(*inputs).backward(grad)

    return run


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", pera_shapes(), ids=shape_id)
@torch.no_grad()
def test_forward(record, shape, provider):
    m, n, k, r = shape
    inputs = _inputs(m, n, k, r, requires_grad=False)
    with perfkern.use_backend(provider):
        truth = ref.pera_adapter(*[t.double() for t in inputs], mode=MODE)
        assert_within_torch_error(_fused(*inputs), truth, _naive(*inputs), "y")
        record("pera_adapter fwd", shape_id(shape), provider, lambda: _fused(*inputs),
               "naive PyTorch (materialised Â, B̂)", lambda: _naive(*inputs),
               others={f"plain LoRA r={r}": lambda: _lora(*inputs)})  # fmt: skip


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", pera_shapes(), ids=shape_id)
def test_forward_backward(record, shape, provider):
    m, n, k, r = shape
    inputs = _inputs(m, n, k, r, requires_grad=True)
    grad = torch.randn(m, n, device=DEVICE, dtype=DTYPE)
    with perfkern.use_backend(provider):
        _step(_fused, inputs, grad)()
        fused_grads = [t.grad.clone() for t in inputs]
        _step(_naive, inputs, grad)()
        truths = ref.pera_adapter_backward(grad.double(), *[t.detach().double() for t in inputs], mode=MODE)
        for name, got, truth, t in zip(("dx", "dA", "dB", "dh"), fused_grads, truths, inputs, strict=True):
            assert_within_torch_error(got, truth, t.grad, name)
        record("pera_adapter fwd+bwd", shape_id(shape), provider, _step(_fused, inputs, grad),
               "naive PyTorch (materialised Â, B̂)", _step(_naive, inputs, grad),
               others={f"plain LoRA r={r}": _step(_lora, inputs, grad)})  # fmt: skip
