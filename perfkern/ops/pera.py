"""PERA ops ``perfkern::pera_*`` (DESIGN §3.4): schemas, fake kernels, autograd, per-backend implementations.

The forward also returns Z = x·Âᵀ [M, r + |P|] (fp32, fp64 for fp64 inputs; not differentiable): the backward
takes it instead of reading x once more to rebuild it. The adapter's backward is an op of its own, so a backend
can produce dx, dA, dB and dh together from the factors it generates on chip (dh is a reduction over K).
"""

from __future__ import annotations

import torch

from perfkern import _dispatch, _ext
from perfkern.ops._common import core_workspace, empty, launch_core, rows_contiguous
from perfkern.reference import pera as ref


def _ref_adapter(x, lora_a, lora_b, h, scale, mode, out, z):
    out.copy_(ref.pera_adapter(x, lora_a, lora_b, h, scale, mode))
    a_hat, _ = ref.expand(lora_a, lora_b, h, mode)
    z.copy_(x.to(a_hat.dtype) @ a_hat.t())


def _ref_adapter_backward(grad, x, lora_a, lora_b, h, z, scale, mode, dx, d_a, d_b, d_h):
    # The truth rebuilds everything from the inputs; z is the backends' shortcut.
    for out, g in zip(
        (dx, d_a, d_b, d_h), ref.pera_adapter_backward(grad, x, lora_a, lora_b, h, scale, mode), strict=True
    ):
        out.copy_(g)


def _ref_delta_weight(lora_a, lora_b, h, scale, mode, out):
    out.copy_(ref.pera_delta_weight(lora_a, lora_b, h, scale, mode))


_TRITON = "perfkern.kernels.pera"


def _triton_adapter_backward(grad, x, lora_a, lora_b, h, z, scale, mode, dx, d_a, d_b, d_h):
    from perfkern.kernels import pera as kernels

    kernels.adapter_backward(grad, x, lora_a, lora_b, h, scale, mode, dx, d_a, d_b, d_h, z=z)


# CUDA backend: the core's launchers (perfkern_pera_*), Â and B̂ generated on chip there too.

_CORE_MODES = {"full": 0, "square": 1, "cross": 2}
# Ranks the core's kernels take (the fold buffers hold [64, r + 1] fp32 per CTA).
CUDA_MAX_RANK = 128


def _cuda_check(lora_a: torch.Tensor) -> None:
    if lora_a.shape[0] > CUDA_MAX_RANK:
        raise _dispatch.BackendUnavailableError(
            f"the cuda PERA kernels take r <= {CUDA_MAX_RANK}, got r={lora_a.shape[0]}"
        )


def _factor_fields(lora_a, lora_b, h, scale, mode) -> dict:
    return dict(
        lora_a=lora_a, lora_b=lora_b, h=h if h.numel() else None, r=lora_a.shape[0], scale=float(scale),
        a_row_stride=lora_a.stride(0), b_row_stride=lora_b.stride(0), mode=_CORE_MODES[mode],
        dtype=_ext.DTYPE_CODES[lora_a.dtype],
    )  # fmt: skip


def _cuda_adapter(x, lora_a, lora_b, h, scale, mode, out, z):
    _cuda_check(lora_a)
    x, lora_a, lora_b, h = rows_contiguous(x), rows_contiguous(lora_a), rows_contiguous(lora_b), h.contiguous()
    launch_core(
        "pera_forward", x.device, x=x, out=out, z=z, m=x.shape[0], n=lora_b.shape[0], k=x.shape[1], accumulate=0,
        x_row_stride=x.stride(0), out_row_stride=out.stride(0), z_row_stride=z.stride(0),
        **_factor_fields(lora_a, lora_b, h, scale, mode),
    )  # fmt: skip


def _cuda_adapter_backward(grad, x, lora_a, lora_b, h, z, scale, mode, dx, d_a, d_b, d_h):
    _cuda_check(lora_a)
    grad, x, z = rows_contiguous(grad), rows_contiguous(x), rows_contiguous(z)
    lora_a, lora_b, h = rows_contiguous(lora_a), rows_contiguous(lora_b), h.contiguous()
    fields = dict(
        grad=grad, x=x, z=z, dx=dx, d_a=d_a, d_b=d_b, d_h=d_h if d_h.numel() else None, accumulate=0, m=x.shape[0],
        n=grad.shape[1], k=x.shape[1], grad_row_stride=grad.stride(0), x_row_stride=x.stride(0),
        z_row_stride=z.stride(0), dx_row_stride=dx.stride(0), d_a_row_stride=d_a.stride(0),
        d_b_row_stride=d_b.stride(0), **_factor_fields(lora_a, lora_b, h, scale, mode),
    )  # fmt: skip
    workspace = core_workspace("pera_backward_workspace_size", x.device, workspace=None, workspace_bytes=0, **fields)
    launch_core("pera_backward", x.device, workspace=workspace, workspace_bytes=workspace.numel(), **fields)


def _cuda_delta_weight(lora_a, lora_b, h, scale, mode, out):
    _cuda_check(lora_a)
    lora_a, lora_b, h = rows_contiguous(lora_a), rows_contiguous(lora_b), h.contiguous()
    launch_core(
        "pera_delta_weight", lora_a.device, out=out, n=out.shape[0], k=out.shape[1], out_row_stride=out.stride(0),
        **_factor_fields(lora_a, lora_b, h, scale, mode),
    )  # fmt: skip


# auto leaves the CUDA core's kernels out until they have passed the GPU test suite (PERFKERN_BACKEND=cuda runs
# them).
_PROVEN = ("triton", "reference")
ADAPTER = _dispatch.OpImpls("pera_adapter", _ref_adapter, f"{_TRITON}:adapter", _cuda_adapter, preference=_PROVEN)
ADAPTER_BACKWARD = _dispatch.OpImpls(
    "pera_adapter_backward", _ref_adapter_backward, _triton_adapter_backward, _cuda_adapter_backward,
    preference=_PROVEN,
)  # fmt: skip
DELTA_WEIGHT = _dispatch.OpImpls(
    "pera_delta_weight", _ref_delta_weight, f"{_TRITON}:delta_weight", _cuda_delta_weight, preference=_PROVEN
)


@torch.library.custom_op("perfkern::pera_adapter", mutates_args=())
def pera_adapter(
    x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, h: torch.Tensor, scale: float, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = x.reshape(-1, x.shape[-1])
    out = empty((x2.shape[0], lora_b.shape[0]), x.dtype, x.device)
    z = empty((x2.shape[0], lora_a.shape[0] + h.shape[0]), ref.acc_dtype(x), x.device)
    _dispatch.run(ADAPTER, x.device, x2, lora_a, lora_b, h, scale, mode, out, z)
    return out.view(*x.shape[:-1], lora_b.shape[0]), z


@pera_adapter.register_fake
def _(x, lora_a, lora_b, h, scale, mode):
    torch._check(x.shape[-1] == lora_a.shape[1])
    m = x.numel() // x.shape[-1]
    return x.new_empty((*x.shape[:-1], lora_b.shape[0])), x.new_empty(
        (m, lora_a.shape[0] + h.shape[0]), dtype=ref.acc_dtype(x)
    )


@torch.library.custom_op("perfkern::pera_adapter_backward", mutates_args=())
def pera_adapter_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    h: torch.Tensor,
    z: torch.Tensor,
    scale: float,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x2 = x.reshape(-1, x.shape[-1])
    grad2 = grad.reshape(-1, grad.shape[-1])
    dx = empty(x2.shape, x.dtype, x.device)
    d_a = empty(lora_a.shape, lora_a.dtype, x.device)
    d_b = empty(lora_b.shape, lora_b.dtype, x.device)
    d_h = empty(h.shape, h.dtype, x.device)
    _dispatch.run(ADAPTER_BACKWARD, x.device, grad2, x2, lora_a, lora_b, h, z, scale, mode, dx, d_a, d_b, d_h)
    return dx.view(x.shape), d_a, d_b, d_h


@pera_adapter_backward.register_fake
def _(grad, x, lora_a, lora_b, h, z, scale, mode):
    return torch.empty_like(x), torch.empty_like(lora_a), torch.empty_like(lora_b), torch.empty_like(h)


def _adapter_setup_context(ctx, inputs, output):
    x, lora_a, lora_b, h, scale, mode = inputs
    ctx.scale, ctx.mode = scale, mode
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, lora_a, lora_b, h, output[1])


def _adapter_backward(ctx, grad, grad_z):
    x, lora_a, lora_b, h, z = ctx.saved_tensors
    dx, d_a, d_b, d_h = pera_adapter_backward(grad.contiguous(), x, lora_a, lora_b, h, z, ctx.scale, ctx.mode)
    return dx, d_a, d_b, d_h, None, None


pera_adapter.register_autograd(_adapter_backward, setup_context=_adapter_setup_context)


@torch.library.custom_op("perfkern::pera_delta_weight", mutates_args=())
def pera_delta_weight(
    lora_a: torch.Tensor, lora_b: torch.Tensor, h: torch.Tensor, scale: float, mode: str
) -> torch.Tensor:
    out = empty((lora_b.shape[0], lora_a.shape[1]), lora_a.dtype, lora_a.device)
    _dispatch.run(DELTA_WEIGHT, lora_a.device, lora_a, lora_b, h, scale, mode, out)
    return out


@pera_delta_weight.register_fake
def _(lora_a, lora_b, h, scale, mode):
    return lora_a.new_empty((lora_b.shape[0], lora_a.shape[1]))


def _delta_setup_context(ctx, inputs, output):
    lora_a, lora_b, h, scale, mode = inputs
    ctx.scale, ctx.mode = scale, mode
    ctx.save_for_backward(lora_a, lora_b, h)


def _delta_backward(ctx, grad):
    # ΔW = s·B̂·Â is the adapter applied to the identity: x = I_K gives rows ΔWᵀ, so the adapter's backward with
    # upstream gradient Gᵀ gives the factors' gradients.
    lora_a, lora_b, h = ctx.saved_tensors
    eye = torch.eye(lora_a.shape[1], dtype=lora_a.dtype, device=lora_a.device)
    _, z = pera_adapter(eye, lora_a, lora_b, h, ctx.scale, ctx.mode)
    _, d_a, d_b, d_h = pera_adapter_backward(grad.t().contiguous(), eye, lora_a, lora_b, h, z, ctx.scale, ctx.mode)
    return d_a, d_b, d_h, None, None


pera_delta_weight.register_autograd(_delta_backward, setup_context=_delta_setup_context)
