"""Dendrite-error correlation (DESIGN §3.5): the batched statistics pass and the fused update (statistics and the
candidate gradient) against an eager PyTorch per-layer implementation of the same math, as a straightforward
library writes it (autograd through the Pearson formula, one layer at a time), in the same run."""

import pytest
import torch
from shapes import dendrite_shapes, shape_id

import perfkern
from perfkern.dendrites import CorrelationState
from perfkern.ops import dendrite as ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
PROVIDERS = [
    b for b in perfkern.available_backends(DEVICE) if ops.STATS.has(b) and not (DEVICE == "cpu" and b == "triton")
]


def _inputs(layers, p, c, n):
    values = (0.5 + 0.05 * torch.randn(layers, p, c, n, device=DEVICE)).to(DTYPE)
    errors = torch.randn(layers, p, n, device=DEVICE).to(DTYPE)
    return values, errors


def _eager_update(values, errors):
    """Per layer: Pearson scores by autograd-able PyTorch ops, then the candidate gradient of −Σ|score|."""
    grads = []
    for v, e in zip(values, errors, strict=True):
        v = v.float().requires_grad_(True)
        e = e.float()
        dv = v - v.mean(0)
        de = e - e.mean(0)
        cov = (dv * de.unsqueeze(1)).mean(0)
        score = cov / (dv.square().mean(0).sqrt() * de.square().mean(0).sqrt().unsqueeze(0))
        (-score.abs().sum()).backward()
        grads.append(v.grad.to(values.dtype))
    return torch.stack(grads)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", dendrite_shapes(), ids=shape_id)
def test_stats(record, shape, provider):
    layers, p, c, n = shape
    values, errors = _inputs(*shape)
    with perfkern.use_backend(provider):
        score = perfkern.dendrite_correlation(values, errors, "pearson")
        torch.testing.assert_close(score, perfkern.reference.dendrite.dendrite_correlation(values, errors, "pearson"),
                                   atol=2e-3, rtol=2e-2)  # fmt: skip
        moved = values.numel() * values.element_size() + errors.numel() * errors.element_size()
        record("dendrite stats (pearson)", shape_id(shape), provider,
               lambda: torch.ops.perfkern.dendrite_stats(values, errors),
               "eager PyTorch per layer (scores only)",
               lambda: [perfkern.reference.dendrite.dendrite_correlation(v[None], e[None], "pearson")
                        for v, e in zip(values, errors, strict=True)], moved)  # fmt: skip


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", dendrite_shapes(), ids=shape_id)
def test_update(record, shape, provider):
    layers, p, c, n = shape
    values, errors = _inputs(*shape)
    with perfkern.use_backend(provider):
        state = CorrelationState(layers, c, n, mode="pearson", device=DEVICE)
        fused = state.update(values, errors)
        torch.testing.assert_close(fused.float(), _eager_update(values, errors).float(), atol=1e-3, rtol=5e-2)
        record("dendrite update (stats + grad)", shape_id(shape), provider, lambda: state.update(values, errors),
               "eager PyTorch per layer + autograd", lambda: _eager_update(values, errors))  # fmt: skip
