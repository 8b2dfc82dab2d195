"""Dendrite-correlation ops ``perfkern::dendrite_*`` (DESIGN §3.5): schemas, fakes, autograd, backends.

Two kernels carry everything: ``dendrite_stats`` (one stable pass over V and E for the means, the covariance and
the variances) and ``dendrite_grad`` (∂/∂V = α ⊙ (E − Ē) + β ⊙ (V − V̄), a streaming pass). The score and the
coefficients α, β are [L, C, N] arithmetic in PyTorch. Inputs are stacked [L, P, C, N] / [L, P, N].
"""

from __future__ import annotations

import torch

from perfkern import _dispatch, _ext
from perfkern.ops._common import core_workspace, empty, launch_core
from perfkern.reference import dendrite as ref

_TRITON = "perfkern.kernels.dendrite"


def _ref_stats(values, errors, v_mean, e_mean, cov, v_var, e_var):
    for out, got in zip((v_mean, e_mean, cov, v_var, e_var), ref.stats(values, errors), strict=True):
        out.copy_(got)


def _ref_grad(values, errors, v_mean, e_mean, alpha, beta, out):
    out.copy_(ref.grad(values, errors, v_mean, e_mean, alpha, beta))


# CUDA backend: the core's launchers (perfkern_dendrite_*), all layers in one launch.

_CORE_MODE_CC = 0


def _values_fields(values, errors) -> dict:
    layers, p, c, n = values.shape
    return dict(
        values=values, errors=errors, layers=layers, p=p, c=c, n=n, values_stride_l=values.stride(0),
        values_stride_p=values.stride(1), values_stride_c=values.stride(2), errors_stride_l=errors.stride(0),
        errors_stride_p=errors.stride(1), dtype=_ext.DTYPE_CODES[values.dtype],
    )  # fmt: skip


def _moments(prefix, v_mean, e_mean, cov=None, v_var=None, e_var=None, count=0.0) -> dict:
    stats = dict(v_mean=v_mean, e_mean=e_mean, cov=cov, v_var=v_var, e_var=e_var)
    return {f"{prefix}_{key}": t for key, t in stats.items()} | {f"{prefix}_count": float(count)}


def _cuda_stats(values, errors, v_mean, e_mean, cov, v_var, e_var):
    layers, p, c, n = values.shape
    if c == 0:
        raise _dispatch.BackendUnavailableError("the cuda dendrite kernels need at least one candidate (C >= 1)")
    if layers * n == 0:
        return
    if p == 0:
        for t in (v_mean, e_mean, cov, v_var, e_var):
            t.fill_(float("nan"))
        return
    values, errors = values.contiguous(), errors.contiguous()
    fields = dict(
        **_values_fields(values, errors), **_moments("stats", v_mean, e_mean, cov, v_var, e_var), score=None,
        mode=_CORE_MODE_CC,
    )  # fmt: skip
    workspace = core_workspace(
        "dendrite_correlation_workspace_size", values.device, workspace=None, workspace_bytes=0, **fields
    )
    launch_core("dendrite_correlation", values.device, workspace=workspace, workspace_bytes=workspace.numel(), **fields)


def _cuda_grad(values, errors, v_mean, e_mean, alpha, beta, out):
    if out.numel() == 0:
        return
    values, errors = values.contiguous(), errors.contiguous()
    launch_core(
        "dendrite_grad", values.device, **_values_fields(values, errors), **_moments("batch", v_mean, e_mean),
        alpha=alpha.float().contiguous(), beta=None if beta is None else beta.float().contiguous(), upstream=None,
        out=out, out_stride_l=out.stride(0), out_stride_p=out.stride(1), out_stride_c=out.stride(2),
        source=0, mode=_CORE_MODE_CC,
    )  # fmt: skip


# auto leaves the CUDA core's kernels out until they have passed the GPU test suite (PERFKERN_BACKEND=cuda runs
# them).
_PROVEN = ("triton", "reference")
STATS = _dispatch.OpImpls("dendrite_stats", _ref_stats, f"{_TRITON}:stats", _cuda_stats, preference=_PROVEN)
GRAD = _dispatch.OpImpls("dendrite_grad", _ref_grad, f"{_TRITON}:grad", _cuda_grad, preference=_PROVEN)


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
