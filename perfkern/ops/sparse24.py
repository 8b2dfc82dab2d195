"""The 2:4 format ops ``perfkern::*``: schemas, fake kernels, autograd and the per-backend implementations.

Every backend implementation takes its inputs and preallocated outputs (``out=`` style), so allocation, and the
NaN poisoning of outputs under test, happen once here. Inputs arrive checked by ``perfkern.sparsity``.
"""

from __future__ import annotations

import torch

from perfkern import _autotune, _dispatch, _ext
from perfkern.ops._common import empty, launch_cpu, rows_contiguous
from perfkern.ops._common import launch_core as _launch
from perfkern.reference import sparse24 as ref

_TRITON = "perfkern.kernels.sparse24"


# Reference backend: the pure functions of perfkern.reference, written into the preallocated outputs.


def _ref_compress(src, values, meta, mask):
    if mask is not None:
        mask.copy_(ref.mask_2to4(src))
    if values is not None or meta is not None:
        v, m = ref.compress_2to4(src)
        if values is not None:
            values.copy_(v)
        if meta is not None:
            meta.copy_(m)


def _ref_decompress(values, meta, dense):
    dense.copy_(ref.decompress_2to4(values, meta))


def _ref_gather(dense, meta, values):
    values.copy_(ref.gather_2to4(dense, meta))


def _ref_meta_reorder(src, dst, to_cutlass):
    dst.copy_(ref.meta_to_cutlass(src) if to_cutlass else ref.meta_from_cutlass(src))


# CUDA backend: perfkern._C launchers over the torch-free C ABI.


def _rs(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.stride(0)


def _cuda_compress(src, values, meta, mask):
    _launch(
        "sparse24_compress", src.device, src=src, values=values, meta=meta, mask=mask,
        rows=src.shape[0], cols=src.shape[1], src_row_stride=_rs(src), values_row_stride=_rs(values),
        meta_row_stride=_rs(meta), mask_row_stride=_rs(mask), dtype=_ext.DTYPE_CODES[src.dtype],
    )  # fmt: skip


def _cuda_decompress(values, meta, dense):
    _launch(
        "sparse24_decompress", dense.device, values=values, meta=meta, dense=dense,
        rows=dense.shape[0], cols=dense.shape[1], values_row_stride=_rs(values), meta_row_stride=_rs(meta),
        dense_row_stride=_rs(dense), dtype=_ext.DTYPE_CODES[dense.dtype],
    )  # fmt: skip


def _cuda_gather(dense, meta, values):
    _launch(
        "sparse24_gather", dense.device, dense=dense, meta=meta, values=values,
        rows=dense.shape[0], cols=dense.shape[1], dense_row_stride=_rs(dense), meta_row_stride=_rs(meta),
        values_row_stride=_rs(values), dtype=_ext.DTYPE_CODES[dense.dtype],
    )  # fmt: skip


def _cuda_meta_reorder(src, dst, to_cutlass):
    _launch(
        "sparse24_meta_reorder",
        src.device,
        src=src,
        dst=dst,
        rows=src.shape[0],
        meta_cols=src.shape[1],
        to_cutlass=int(bool(to_cutlass)),
    )


COMPRESS = _dispatch.OpImpls("compress_2to4", _ref_compress, f"{_TRITON}:compress", _cuda_compress)
DECOMPRESS = _dispatch.OpImpls("decompress_2to4", _ref_decompress, f"{_TRITON}:decompress", _cuda_decompress)
GATHER = _dispatch.OpImpls("gather_2to4", _ref_gather, f"{_TRITON}:gather", _cuda_gather)
META_REORDER = _dispatch.OpImpls(
    "meta_reorder_cutlass", _ref_meta_reorder, f"{_TRITON}:meta_reorder", _cuda_meta_reorder
)


# mask_2to4 shares the compress kernels (only the mask output is written), but reports under its own name.
MASK = _dispatch.OpImpls("mask_2to4", _ref_compress, f"{_TRITON}:compress", _cuda_compress)


@torch.library.custom_op("perfkern::mask_2to4", mutates_args=())
def mask_2to4(scores: torch.Tensor) -> torch.Tensor:
    scores = rows_contiguous(scores)
    mask = empty(scores.shape, torch.bool, scores.device)
    _dispatch.run(MASK, scores.device, scores, None, None, mask.view(torch.uint8))
    return mask


@mask_2to4.register_fake
def _(scores):
    torch._check(scores.shape[1] % 16 == 0)
    return scores.new_empty(scores.shape, dtype=torch.bool)


@torch.library.custom_op("perfkern::compress_2to4", mutates_args=())
def compress_2to4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = rows_contiguous(w)
    n, k = w.shape
    values = empty((n, k // 2), w.dtype, w.device)
    meta = empty((n, k // 16), torch.int16, w.device)
    _dispatch.run(COMPRESS, w.device, w, values, meta, None)
    return values, meta


@compress_2to4.register_fake
def _(w):
    n, k = w.shape
    torch._check(k % 16 == 0)
    return w.new_empty((n, k // 2)), w.new_empty((n, k // 16), dtype=torch.int16)


@torch.library.custom_op("perfkern::decompress_2to4", mutates_args=())
def decompress_2to4(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    values, meta = rows_contiguous(values), rows_contiguous(meta)
    dense = empty((values.shape[0], values.shape[1] * 2), values.dtype, values.device)
    _dispatch.run(DECOMPRESS, values.device, values, meta, dense)
    return dense


@decompress_2to4.register_fake
def _(values, meta):
    torch._check(meta.shape[0] == values.shape[0])
    torch._check(meta.shape[1] * 8 == values.shape[1])
    return values.new_empty((values.shape[0], values.shape[1] * 2))


@torch.library.custom_op("perfkern::gather_2to4", mutates_args=())
def gather_2to4(dense: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    dense, meta = rows_contiguous(dense), rows_contiguous(meta)
    values = empty((dense.shape[0], dense.shape[1] // 2), dense.dtype, dense.device)
    _dispatch.run(GATHER, dense.device, dense, meta, values)
    return values


@gather_2to4.register_fake
def _(dense, meta):
    torch._check(meta.shape[0] == dense.shape[0])
    torch._check(meta.shape[1] * 16 == dense.shape[1])
    return dense.new_empty((dense.shape[0], dense.shape[1] // 2))


@torch.library.custom_op("perfkern::meta_to_cutlass", mutates_args=())
def meta_to_cutlass(meta: torch.Tensor) -> torch.Tensor:
    meta = meta.contiguous()
    out = empty(meta.shape, torch.int16, meta.device)
    _dispatch.run(META_REORDER, meta.device, meta, out, True)
    return out


@meta_to_cutlass.register_fake
def _(meta):
    return torch.empty_like(meta)


@torch.library.custom_op("perfkern::meta_from_cutlass", mutates_args=())
def meta_from_cutlass(meta_c: torch.Tensor) -> torch.Tensor:
    meta_c = meta_c.contiguous()
    out = empty(meta_c.shape, torch.int16, meta_c.device)
    _dispatch.run(META_REORDER, meta_c.device, meta_c, out, False)
    return out


@meta_from_cutlass.register_fake
def _(meta_c):
    return torch.empty_like(meta_c)


# Autograd. compress keeps some entries of w, decompress scatters values into zeros, gather picks entries of a
# dense matrix: each is linear in its float input, and the adjoint of scatter-by-meta is gather-by-meta.


def _save_meta_compress(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _compress_backward(ctx, grad_values, grad_meta):
    (meta,) = ctx.saved_tensors
    return decompress_2to4(grad_values.contiguous(), meta)


def _save_meta_arg(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _decompress_backward(ctx, grad_dense):
    (meta,) = ctx.saved_tensors
    return gather_2to4(grad_dense.contiguous(), meta), None


def _gather_backward(ctx, grad_values):
    (meta,) = ctx.saved_tensors
    return decompress_2to4(grad_values.contiguous(), meta), None


compress_2to4.register_autograd(_compress_backward, setup_context=_save_meta_compress)
decompress_2to4.register_autograd(_decompress_backward, setup_context=_save_meta_arg)
gather_2to4.register_autograd(_gather_backward, setup_context=_save_meta_arg)


# The sparse linear layer (DESIGN §3.3). Two primitives carry the arithmetic:
#   sparse24_mm:          out = x·Wsᵀ + b + s·T·Bᵀ, with T = x·Aᵀ [M, r] computed beforehand (a thin GEMM), so the
#                         kernel adds the low-rank term in its own accumulator and no M×N intermediate exists.
#                         The double-pruned dx is the same product with the backward copy: dy·Wbwd + s·(dy·B)·A.
#   sparse24_weight_grad: the kept entries of dyᵀ·x only, in compressed order.


def _ref_mm(x, values, meta, bias, lora_t, lora_b, scale, out):
    acc = ref.acc_dtype(x)
    y = x.to(acc) @ ref.decompress_2to4(values, meta).to(acc).t()
    if bias is not None:
        y = y + bias.to(acc)
    if lora_t is not None:
        y = y + scale * (lora_t.to(acc) @ lora_b.to(acc).t())
    out.copy_(y)


def _ref_weight_grad(dy, x, meta, out_values):
    acc = ref.acc_dtype(x)
    out_values.copy_(ref.gather_2to4(dy.to(acc).t() @ x.to(acc), meta))


def cuda_mm_unsupported(x: torch.Tensor) -> str | None:
    """Why the sparse-tensor-core kernel cannot take this call, or None."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        return f"the cuda sparse24_mm runs float16/bfloat16 (sparse tensor cores), got {x.dtype}"
    if x.shape[1] % 32 != 0:
        return f"the cuda sparse24_mm needs K % 32 == 0, got K={x.shape[1]}"
    return None


def _mma_meta(meta: torch.Tensor) -> torch.Tensor:
    """The kernel's metadata layout, derived from the canonical meta once and cached on the meta's storage (so it
    dies with it), rebuilt whenever that storage is written in place. Cached on the storage, not the tensor: a
    ``SparseLoRALinear`` passes a fresh int16 view of its uint8 buffer at every call (a view shares its storage's
    version counter, so a write through the buffer or any view of it is seen)."""
    storage = meta.untyped_storage()
    key = (meta._version, meta.data_ptr(), tuple(meta.shape), meta.stride())
    cached = getattr(storage, "_perfkern_mma_meta", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    module = _ext.require()
    rows, cols = meta.shape
    out = torch.empty(module.sparse24_mma_meta_size(rows, cols), dtype=torch.int16, device=meta.device)
    _launch("sparse24_meta_to_mma", meta.device, src=meta.contiguous(), dst=out, rows=rows, meta_cols=cols)
    storage._perfkern_mma_meta = (key, out)
    return out


# perfkern_sparse24_mm_kernel_t: 0 lets the core pick (wgmma.sp on sm_90 for M > 32, else mma.sp); tests and
# benchmarks pin 1 (mma.sp) or 2 (wgmma.sp).
CUDA_MM_KERNELS = {"auto": 0, "mma.sp": 1, "wgmma.sp": 2}


def _cuda_mm(x, values, meta, bias, lora_t, lora_b, scale, out, kernel=0):
    reason = cuda_mm_unsupported(x)
    if reason is not None:
        raise _dispatch.BackendUnavailableError(reason)
    m, k = x.shape
    has_lora = lora_t is not None
    _launch(
        "sparse24_mm", x.device, x=x, values=values, meta_mma=_mma_meta(meta), bias=bias, lora_t=lora_t,
        lora_b=lora_b, out=out, m=m, n=values.shape[0], k=k, r=lora_t.shape[1] if has_lora else 0,
        scale=float(scale), x_row_stride=x.stride(0), values_row_stride=values.stride(0),
        bias_stride=bias.stride(0) if bias is not None else 0,
        t_stride0=lora_t.stride(0) if has_lora else 0, t_stride1=lora_t.stride(1) if has_lora else 0,
        b_stride0=lora_b.stride(0) if has_lora else 0, b_stride1=lora_b.stride(1) if has_lora else 0,
        out_row_stride=out.stride(0), dtype=_ext.DTYPE_CODES[x.dtype], kernel=kernel,
    )  # fmt: skip


# CPU backend: the core's CPU kernels (perfkern_sparse24_mm_cpu), on torch's thread count. Built with OpenMP, the
# core runs them in the process's OpenMP runtime, which is torch's (one libgomp.so.1), so they share torch's threads
# rather than contend with its idle workers' spinning.


def _cpu_mm(x, values, meta, bias, lora_t, lora_b, scale, out, isa="auto"):
    dtypes = {t.dtype for t in (x, values, bias, lora_t, lora_b) if t is not None}
    if len(dtypes) != 1 or x.dtype not in _ext.DTYPE_CODES:
        got = sorted(map(str, dtypes))
        raise _dispatch.BackendUnavailableError(
            f"the cpu sparse24_mm takes one float32/float16/bfloat16 dtype for all operands, got {got}"
        )
    values, meta = rows_contiguous(values), rows_contiguous(meta)
    m, k = x.shape
    has_lora = lora_t is not None
    launch_cpu(
        "sparse24_mm_cpu", x=x, values=values, meta=meta, bias=bias, lora_t=lora_t, lora_b=lora_b, out=out,
        m=m, n=values.shape[0], k=k, r=lora_t.shape[1] if has_lora else 0,
        scale=float(scale), x_row_stride=x.stride(0), values_row_stride=values.stride(0),
        meta_row_stride=meta.stride(0), bias_stride=bias.stride(0) if bias is not None else 0,
        t_stride0=lora_t.stride(0) if has_lora else 0, t_stride1=lora_t.stride(1) if has_lora else 0,
        b_stride0=lora_b.stride(0) if has_lora else 0, b_stride1=lora_b.stride(1) if has_lora else 0,
        out_row_stride=out.stride(0), dtype=_ext.DTYPE_CODES[x.dtype], isa=_ext.CPU_ISAS[isa],
    )  # fmt: skip


# Dense backend: torch.mm (cuBLAS on a GPU) on the decompressed weight, in the inputs' dtype as nn.Linear computes.
# auto runs it for the shapes where it measured faster than every sparse kernel (perfkern._autotune), so a sparse
# layer is never knowingly slower than nn.Linear with LoRA.


def _weight_key(values: torch.Tensor, meta: torch.Tensor) -> tuple | None:
    """What identifies the weight's current contents; None for inference tensors, which keep no version."""
    if torch.is_inference(values) or torch.is_inference(meta):
        return None
    return (values._version, values.data_ptr(), tuple(values.shape), values.stride(),
            meta._version, meta.data_ptr(), tuple(meta.shape), meta.stride())  # fmt: skip


def weight_is_steady(values: torch.Tensor, meta: torch.Tensor) -> bool:
    """Whether the previous sparse24_mm call on this weight saw it exactly as it is now (see ``mark_weight_seen``):
    a frozen weight is steady from its second call on; a training weight, written every step, and a backward copy
    built per call never are."""
    key = _weight_key(values, meta)
    return key is not None and getattr(values.untyped_storage(), "_perfkern_seen", None) == key


def mark_weight_seen(values: torch.Tensor, meta: torch.Tensor) -> None:
    key = _weight_key(values, meta)
    if key is not None:
        values.untyped_storage()._perfkern_seen = key


def _dense_weight(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Ws [N, K], decompressed once and cached on the values' storage (so it dies with it), rebuilt whenever values
    or meta is written in place. It costs a dense copy of the weight, so only the dense backend builds it. The
    entry holds the meta it was built from, so no other meta can take that address while it lives. Inference
    tensors keep no version counter: their weight is decompressed at every call."""
    key = _weight_key(values, meta)
    if key is None or getattr(values.untyped_storage(), "_perfkern_seen", None) != key:
        # A weight that changed since the previous call will likely change again: decompress, keep nothing (and
        # the timing of this candidate pays the decompression, as every call will).
        return decompress_2to4(values, meta)
    storage = values.untyped_storage()
    cached = getattr(storage, "_perfkern_dense", None)
    if cached is not None and cached[0] == key:
        return cached[2]
    dense = decompress_2to4(values, meta)
    storage._perfkern_dense = (key, meta, dense)
    return dense


def _drop_dense_weight(x, values, *rest):
    """Free the dense weight that timing the dense candidate built, when another backend won."""
    storage = values.untyped_storage()
    if hasattr(storage, "_perfkern_dense"):
        del storage._perfkern_dense


def _dense_mm(x, values, meta, bias, lora_t, lora_b, scale, out):
    w = _dense_weight(values, meta)
    if bias is None:
        torch.mm(x, w.t(), out=out)
    else:
        torch.addmm(bias, x, w.t(), out=out)
    if lora_t is not None:
        out.addmm_(lora_t, lora_b.t(), alpha=scale)


def _dense_weight_grad(dy, x, meta, out_values):
    out_values.copy_(ref.gather_2to4(torch.mm(dy.t(), x), meta))


def _mm_shape(x, values, meta, bias, lora_t, lora_b, scale, out):
    rank = 0 if lora_t is None else lora_t.shape[1]
    steady = weight_is_steady(values, meta)
    return x.dtype, x.shape[0], values.shape[0], x.shape[1], rank, bias is not None, steady


def _weight_grad_shape(dy, x, meta, out_values):
    return x.dtype, dy.shape[0], dy.shape[1], x.shape[1], 0, False, False


def _cuda_weight_grad(dy, x, meta, out_values):
    """The core's kernel: a dense tensor-core (fp32: FFMA) tile of dyᵀ·x per CTA, its kept half gathered into the
    compressed layout in the epilogue."""
    dy, x, meta = rows_contiguous(dy), rows_contiguous(x), rows_contiguous(meta)
    code = _ext.DTYPE_CODES[x.dtype]
    _launch(
        "sparse24_weight_grad", x.device, dy=dy, x=x, meta=meta, out=out_values, m=x.shape[0], n=dy.shape[1],
        k=x.shape[1], dy_row_stride=dy.stride(0), x_row_stride=x.stride(0), meta_row_stride=meta.stride(0),
        out_row_stride=out_values.stride(0), accumulate=0, dtype=code, out_dtype=code,
    )  # fmt: skip


# auto (measured or not) leaves the CUDA core's kernels out until they have passed the GPU test suite: timing
# alone would pick a fast kernel whether or not it is right. PERFKERN_BACKEND=cuda runs them.
MM = _dispatch.OpImpls(
    "sparse24_mm", _ref_mm, f"{_TRITON}:mm", _cuda_mm, _cpu_mm, preference=("triton", "reference"), dense=_dense_mm,
    tuning=_autotune.Tuning(_mm_shape, outputs=(7,), release=_drop_dense_weight),
)  # fmt: skip
WEIGHT_GRAD = _dispatch.OpImpls(
    "sparse24_weight_grad", _ref_weight_grad, f"{_TRITON}:weight_grad", _cuda_weight_grad,
    preference=("triton", "reference"), dense=_dense_weight_grad,
    tuning=_autotune.Tuning(_weight_grad_shape, outputs=(3,)),
)  # fmt: skip


@torch.library.custom_op("perfkern::sparse24_mm", mutates_args=())
def sparse24_mm(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None,
    lora_t: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    x = rows_contiguous(x)
    out = empty((x.shape[0], values.shape[0]), x.dtype, x.device)
    _dispatch.run(MM, x.device, x, values, meta, bias, lora_t, lora_b, scale, out)
    mark_weight_seen(values, meta)
    return out


@sparse24_mm.register_fake
def _(x, values, meta, bias, lora_t, lora_b, scale):
    torch._check(x.shape[1] == 2 * values.shape[1])
    return x.new_empty((x.shape[0], values.shape[0]))


@torch.library.custom_op("perfkern::sparse24_weight_grad", mutates_args=())
def sparse24_weight_grad(dy: torch.Tensor, x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    out = empty((dy.shape[1], x.shape[1] // 2), x.dtype, x.device)
    _dispatch.run(WEIGHT_GRAD, x.device, dy, x, meta, out)
    return out


@sparse24_weight_grad.register_fake
def _(dy, x, meta):
    torch._check(dy.shape[0] == x.shape[0])
    return x.new_empty((dy.shape[1], x.shape[1] // 2))


@torch.library.custom_op("perfkern::sparse24_linear", mutates_args=())
def sparse24_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor | None,
    lora_b: torch.Tensor | None,
    scale: float,
    bwd_values: torch.Tensor | None,
    bwd_meta: torch.Tensor | None,
) -> torch.Tensor:
    return linear_forward(x, values, meta, bias, lora_a, lora_b, scale)


def bypasses_dispatcher(*tensors: torch.Tensor | None) -> bool:
    """Whether a call may run ``linear_forward`` directly instead of the custom op: eager (not traced), plain
    tensors on a CPU or CUDA device, and nothing that autograd must record. The op's own machinery (dispatcher,
    autograd wrapper) then adds nothing but time, which at decode sizes outweighs the product itself."""
    if torch.compiler.is_compiling():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (
            type(t) not in _PLAIN or t.device.type not in ("cpu", "cuda") or (grad and t.requires_grad)
        ):
            return False
    return True


# Tensor subclasses (FakeTensor, DTensor, ...) need the dispatcher; parameters are plain tensors.
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def linear_forward(x, values, meta, bias, lora_a, lora_b, scale) -> torch.Tensor:
    """The forward of ``perfkern::sparse24_linear`` (the backward copy only matters to its backward)."""
    x2 = rows_contiguous(x.reshape(-1, x.shape[-1]))
    lora_t = None if lora_a is None else x2 @ lora_a.t()
    # Written through a 2-D view of an output that is not itself a view, so callers may modify it in place.
    out = empty((*x.shape[:-1], values.shape[0]), x.dtype, x.device)
    weight = _weight_key(values, meta)
    steady = weight is not None and getattr(values.untyped_storage(), "_perfkern_seen", None) == weight
    # Everything _mm_shape reports, exactly: the choice for this plan is the choice for the call.
    plan = (x.device, x.dtype, x2.shape[0], *values.shape, 0 if lora_t is None else lora_t.shape[1], bias is None,
            steady)  # fmt: skip
    _dispatch.run_planned(
        MM, x.device, plan, x2, values, meta, bias, lora_t, lora_b, scale, out.view(-1, values.shape[0])
    )
    if weight is not None:
        values.untyped_storage()._perfkern_seen = weight
    return out


@sparse24_linear.register_fake
def _(x, values, meta, bias, lora_a, lora_b, scale, bwd_values, bwd_meta):
    torch._check(x.shape[-1] == 2 * values.shape[1])
    return x.new_empty((*x.shape[:-1], values.shape[0]))


def _linear_setup_context(ctx, inputs, output):
    x, values, meta, bias, lora_a, lora_b, scale, bwd_values, bwd_meta = inputs
    ctx.scale = scale
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, values, meta, lora_a, lora_b, bwd_values, bwd_meta)


def _linear_backward(ctx, grad):
    x, values, meta, lora_a, lora_b, bwd_values, bwd_meta = ctx.saved_tensors
    needs = ctx.needs_input_grad
    k = x.shape[-1]
    dy = grad.reshape(-1, grad.shape[-1]).contiguous()
    x2 = x.reshape(-1, k)
    dy_b = None if lora_a is None else dy @ lora_b  # [M, r]
    dx = d_values = d_bias = d_a = d_b = None
    if needs[0]:
        if bwd_meta is not None and bwd_values is None:
            # The double-pruned copy from the current weight: (Ws)ᵀ gathered onto the backward mask.
            bwd_values = gather_2to4(decompress_2to4(values, meta).t().contiguous(), bwd_meta)
        if bwd_values is not None:
            dx = sparse24_mm(dy, bwd_values, bwd_meta, None, dy_b, None if dy_b is None else lora_a.t(), ctx.scale)
        else:
            # Ws is 2:4 along K, the output dimension of this product: no sparse saving, so a dense GEMM.
            dx = dy @ decompress_2to4(values, meta)
            if dy_b is not None:
                dx = dx + ctx.scale * (dy_b @ lora_a)
        dx = dx.view(x.shape)
    if needs[1]:
        d_values = sparse24_weight_grad(dy, x2, meta)
    if ctx.has_bias and needs[3]:
        d_bias = dy.sum(0)
    if lora_a is not None and needs[4]:
        d_a = ctx.scale * (dy_b.t() @ x2)
    if lora_a is not None and needs[5]:
        d_b = ctx.scale * (dy.t() @ (x2 @ lora_a.t()))
    return dx, d_values, None, d_bias, d_a, d_b, None, None, None


sparse24_linear.register_autograd(_linear_backward, setup_context=_linear_setup_context)
