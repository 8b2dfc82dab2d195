"""Dendrite-correlation ops ``perfkern::dendrite_*`` (DESIGN §3.5): schemas, fakes, autograd, backends.

Two kernels carry everything: ``dendrite_stats`` (one stable pass over V and E for the means, the covariance and
the variances) and ``dendrite_grad`` (∂/∂V = α ⊙ (E − Ē) + β ⊙ (V − V̄), a streaming pass). The score and the
coefficients α, β are [L, C, N] arithmetic in PyTorch. Inputs are stacked [L, P, C, N] / [L, P, N].
"""

from __future__ import annotations

import torch

from perfkern import _dispatch
from perfkern.ops._common import empty
from perfkern.reference import dendrite as ref

_TRITON = "perfkern.kernels.dendrite"


def _ref_stats(values, errors, v_mean, e_mean, cov, v_var, e_var):
    for out, got in zip((v_mean, e_mean, cov, v_var, e_var), ref.stats(values, errors), strict=True):
        out.copy_(got)


def _ref_grad(values, errors, v_mean, e_mean, alpha, beta, out):
    out.copy_(ref.grad(values, errors, v_mean, e_mean, alpha, beta))


STATS = _dispatch.OpImpls("dendrite_stats", _ref_stats, f"{_TRITON}:stats")
GRAD = _dispatch.OpImpls("dendrite_grad", _ref_grad, f"{_TRITON}:grad")


@torch.library.custom_op("perfkern::dendrite_stats", mutates_args=())
def dendrite_stats(
    values: torch.Tensor, errors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    values, errors = values.contiguous(), errors.contiguous()
    layers, _, c, n = values.shape
    device, acc = values.device, ref.acc_dtype(values)
    v_mean = empty((layers, c, n), acc, device)
    e_mean = empty((layers, n), acc, device)
    cov = empty((layers, c, n), acc, device)
    v_var = empty((layers, c, n), acc, device)
    e_var = empty((layers, n), acc, device)
    _dispatch.run(STATS, device, values, errors, v_mean, e_mean, cov, v_var, e_var)
    return v_mean, e_mean, cov, v_var, e_var


@dendrite_stats.register_fake
def _(values, errors):
    layers, _, c, n = values.shape
    per_candidate = values.new_empty((layers, c, n), dtype=ref.acc_dtype(values))
    per_neuron = values.new_empty((layers, n), dtype=ref.acc_dtype(values))
    return (
        per_candidate,
        per_neuron,
        torch.empty_like(per_candidate),
        torch.empty_like(per_candidate),
        torch.empty_like(per_neuron),
    )


@torch.library.custom_op("perfkern::dendrite_grad", mutates_args=())
def dendrite_grad(
    values: torch.Tensor,
    errors: torch.Tensor,
    v_mean: torch.Tensor,
    e_mean: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
) -> torch.Tensor:
    values, errors = values.contiguous(), errors.contiguous()
    out = empty(values.shape, values.dtype, values.device)
    _dispatch.run(GRAD, values.device, values, errors, v_mean, e_mean, alpha.contiguous(),
                  None if beta is None else beta.contiguous(), out)  # fmt: skip
    return out


@dendrite_grad.register_fake
def _(values, errors, v_mean, e_mean, alpha, beta):
    return torch.empty_like(values)


@torch.library.custom_op("perfkern::dendrite_correlation", mutates_args=())
def dendrite_correlation(
    values: torch.Tensor, errors: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(score, v_mean, e_mean, v_var, e_var); only the score is differentiable (in values)."""
    v_mean, e_mean, cov, v_var, e_var = dendrite_stats(values, errors)
    return ref.score(cov, v_var, e_var, mode), v_mean, e_mean, v_var, e_var


@dendrite_correlation.register_fake
def _(values, errors, mode):
    layers, _, c, n = values.shape
    per_candidate = values.new_empty((layers, c, n), dtype=ref.acc_dtype(values))
    per_neuron = values.new_empty((layers, n), dtype=ref.acc_dtype(values))
    return (
        per_candidate,
        torch.empty_like(per_candidate),
        per_neuron,
        torch.empty_like(per_candidate),
        torch.empty_like(per_neuron),
    )


def _correlation_setup_context(ctx, inputs, output):
    values, errors, mode = inputs
    score, v_mean, e_mean, v_var, e_var = output
    ctx.mode = mode
    ctx.mark_non_differentiable(v_mean, e_mean, v_var, e_var)
    ctx.save_for_backward(values, errors, score, v_mean, e_mean, v_var, e_var)


def _correlation_backward(ctx, grad_score, *unused):
    values, errors, score, v_mean, e_mean, v_var, e_var = ctx.saved_tensors
    alpha, beta = ref.grad_coefficients(grad_score, score, v_var, e_var, values.shape[1], ctx.mode)
    return dendrite_grad(values, errors, v_mean, e_mean, alpha, beta), None, None


dendrite_correlation.register_autograd(_correlation_backward, setup_context=_correlation_setup_context)
