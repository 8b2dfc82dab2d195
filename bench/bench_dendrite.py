"""Dendrite-error correlation (DESIGN §3.5): perfkern's batched op against an eager PyTorch per-layer
implementation of the same math, as a straightforward library writes it, in the same run. Like against like:
the scores alone (perfkern.dendrite_correlation against the per-layer formula), and the scores with the candidate
gradient of −Σ|score| (perfkern's op and its backward against autograd through the per-layer formula). Before
timing, the outputs of both timed functions are checked against the fp64 reference at the test suite's tolerances
(``tests/tolerances.py``)."""

import pytest
import torch
from shapes import dendrite_shapes, shape_id
from tolerances import assert_within_torch_error

import perfkern
from perfkern.ops import dendrite as ops
from perfkern.reference import dendrite as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
PROVIDERS = [
    b for b in perfkern.available_backends(DEVICE) if ops.STATS.has(b) and not (DEVICE == "cpu" and b == "triton")
]


def _inputs(layers, p, c, n):
    values = (0.5 + 0.05 * torch.randn(layers, p, c, n, device=DEVICE)).to(DTYPE)
    errors = torch.randn(layers, p, n, device=DEVICE).to(DTYPE)
    return values, errors


def _eager_scores(values, errors, grad=False):
    """Per layer, in fp32: Pearson scores by autograd-able PyTorch ops, and with ``grad`` the candidate gradient
    of −Σ|score| by autograd. Returns the stacked scores, or the stacked gradients."""
    out = []
    for v, e in zip(values, errors, strict=True):
        v = v.float().requires_grad_(grad)
        e = e.float()
        dv = v - v.mean(0)
        de = e - e.mean(0)
        cov = (dv * de.unsqueeze(1)).mean(0)
        score = cov / (dv.square().mean(0).sqrt() * de.square().mean(0).sqrt().unsqueeze(0))
        if grad:
            (-score.abs().sum()).backward()
            out.append(v.grad.to(values.dtype))
        else:
            out.append(score.detach())
    return torch.stack(out)


def _perfkern_scores(values, errors, grad=False):
    """The same with perfkern: one batched op for every layer, and its fused backward."""
    if not grad:
        return perfkern.dendrite_correlation(values, errors, "pearson")
    v = values.detach().requires_grad_(True)
    (-perfkern.dendrite_correlation(v, errors, "pearson").abs().sum()).backward()
    return v.grad


def _truth(values, errors, grad=False):
    v = values.double().requires_grad_(grad)
    score = ref.dendrite_correlation(v, errors.double(), "pearson")
    if not grad:
        return score
    (-score.abs().sum()).backward()
    return v.grad


@pytest.mark.parametrize("grad", [False, True], ids=["scores", "scores+grad"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", dendrite_shapes(), ids=shape_id)
def test_correlation(record, shape, provider, grad):
    values, errors = _inputs(*shape)
    with perfkern.use_backend(provider):
        assert_within_torch_error(
            _perfkern_scores(values, errors, grad),
            _truth(values, errors, grad),
            _eager_scores(values, errors, grad),
            "grad" if grad else "score",
        )
        moved = values.numel() * values.element_size() + errors.numel() * errors.element_size()
        op = "dendrite correlation" + (" + grad" if grad else "")
        record(f"{op} (pearson)", shape_id(shape), provider, lambda: _perfkern_scores(values, errors, grad),
               "eager PyTorch per layer" + (" + autograd" if grad else ""), lambda: _eager_scores(values, errors, grad),
               None if grad else moved)  # fmt: skip
