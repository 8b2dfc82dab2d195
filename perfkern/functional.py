"""Public functions over the ``perfkern::*`` ops: checked arguments, documented math and shapes."""

from __future__ import annotations

import torch

from perfkern.ops import dendrite as _dendrite_ops
from perfkern.ops import pera as _pera_ops
from perfkern.ops import sparse24 as _ops
from perfkern.ops._common import check_float, check_k16, shape_str
from perfkern.reference import dendrite as _dendrite_ref
from perfkern.reference import pera as _pera_ref

__all__ = ["sparse24_linear", "pera_adapter", "pera_delta_weight", "dendrite_correlation"]


def _autocast(device: torch.device, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Under ``torch.autocast`` for ``device``, the float tensors in its dtype (as F.linear gets them); else as is.
    Custom ops are not autocast-aware, so the cast happens here, once, where autograd sees it."""
    if not torch.is_autocast_enabled(device.type):
        return list(tensors)
    dtype = torch.get_autocast_dtype(device.type)
    return [t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors]


def _expect(name: str, t: torch.Tensor, shape: tuple, dims: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must be {dims} = {shape_str(shape)}, got {shape_str(t.shape)}")


def _expect_dtype(name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise TypeError(f"{name} must have x's dtype {dtype}, got {t.dtype}")


def sparse24_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    bias: torch.Tensor | None = None,
    lora_a: torch.Tensor | None = None,
    lora_b: torch.Tensor | None = None,
    scale: float = 1.0,
    bwd_values: torch.Tensor | None = None,
    bwd_meta: torch.Tensor | None = None,
) -> torch.Tensor:
    """A 2:4 sparse linear layer with an optional low-rank adapter (SLoPe, DESIGN §3.3).

    ``y = x·Wsᵀ + b + s·(x·Aᵀ)·Bᵀ``

    - x [..., K]; Ws [N, K] 2:4 along K, given compressed as ``values`` [N, K/2], ``meta`` [N, K/16] int16;
      bias [N]; ``lora_a`` A [r, K] and ``lora_b`` B [N, r] (PEFT's shapes), both or neither; s = ``scale``.
    - Backward: ``dx = dy·Wbwd + s·(dy·B)·A`` where Wbwd is Ws, or, when ``bwd_meta`` [K, N/16] is given,
      SLoPe's double-pruned copy, 2:4 along N, whose transpose ``bwd_values`` [K, N/2] and ``bwd_meta``
      compress (``compress_2to4(Wbwdᵀ)``). Without ``bwd_values`` the copy is taken from the current Ws at
      backward time (Wsᵀ gathered onto ``bwd_meta``), so it always follows the weight. The gradient of
      ``values`` holds only the kept entries of ``dyᵀ·x`` (compressed form); ``dA = s·(dy·B)ᵀ·x``,
      ``dB = s·dyᵀ·(x·Aᵀ)``, ``db = Σ dy``.

    All float tensors share x's dtype (float32, float16 or bfloat16; float64 on the reference backend);
    accumulation is fp32 (fp64 for fp64). Under ``torch.autocast`` they are all cast to the autocast dtype first.
    """
    x, values, bias, lora_a, lora_b, bwd_values = _autocast(x.device, x, values, bias, lora_a, lora_b, bwd_values)
    check_float("x", x)
    if x.dim() < 1:
        raise ValueError("x must be [..., K], got a scalar")
    if values.dim() != 2:
        raise ValueError(f"values must be 2-D [N, K/2], got shape {shape_str(values.shape)}")
    k = x.shape[-1]
    if k != 2 * values.shape[1]:
        # The weight fixes K: a wrong width is the input's fault, and the message says what the weight expects.
        raise ValueError(
            f"x must be [..., K] with K = 2 * values.shape[1] = {2 * values.shape[1]}, got {shape_str(x.shape)}"
        )
    check_k16("K (x.shape[-1])", k)
    n = values.shape[0]
    _expect("values", values, (n, k // 2), "[N, K/2]")
    _expect_dtype("values", values, x.dtype)
    if meta.dtype != torch.int16:
        raise TypeError(f"meta must be int16, got {meta.dtype}")
    _expect("meta", meta, (n, k // 16), "[N, K/16]")
    tensors = {"x": x, "values": values, "meta": meta}
    if bias is not None:
        _expect("bias", bias, (n,), "[N]")
        _expect_dtype("bias", bias, x.dtype)
        tensors["bias"] = bias
    if (lora_a is None) != (lora_b is None):
        raise ValueError("lora_a and lora_b must be given together")
    if lora_a is not None:
        r = lora_a.shape[0] if lora_a.dim() == 2 else -1
        _expect("lora_a", lora_a, (max(r, 0), k), "[r, K]")
        _expect("lora_b", lora_b, (n, r), "[N, r]")
        _expect_dtype("lora_a", lora_a, x.dtype)
        _expect_dtype("lora_b", lora_b, x.dtype)
        tensors.update(lora_a=lora_a, lora_b=lora_b)
    if bwd_values is not None and bwd_meta is None:
        raise ValueError("bwd_values needs its bwd_meta")
    if bwd_meta is not None:
        check_k16("N (values.shape[0]) with a backward copy", n)
        if bwd_values is not None:
            _expect("bwd_values", bwd_values, (k, n // 2), "[K, N/2]")
            _expect_dtype("bwd_values", bwd_values, x.dtype)
            tensors["bwd_values"] = bwd_values
        if bwd_meta.dtype != torch.int16:
            raise TypeError(f"bwd_meta must be int16, got {bwd_meta.dtype}")
        _expect("bwd_meta", bwd_meta, (k, n // 16), "[K, N/16]")
        tensors["bwd_meta"] = bwd_meta
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        listed = ", ".join(f"{name} on {t.device}" for name, t in tensors.items())
        raise ValueError(f"tensors must be on one device, got {listed}")
    if _ops.bypasses_dispatcher(x, values, meta, bias, lora_a, lora_b):
        return _ops.linear_forward(x, values, meta, bias, lora_a, lora_b, float(scale))
    return _ops.sparse24_linear(x, values, meta, bias, lora_a, lora_b, float(scale), bwd_values, bwd_meta)


def _check_pera_factors(lora_a: torch.Tensor, lora_b: torch.Tensor, h: torch.Tensor, mode: str) -> None:
    if mode not in _pera_ref.MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, _pera_ref.MODES))}, got {mode!r}")
    check_float("lora_a", lora_a)
    if lora_a.dim() != 2:
        raise ValueError(f"lora_a must be 2-D [r, K], got shape {shape_str(lora_a.shape)}")
    r, k = lora_a.shape
    if lora_b.dim() != 2 or lora_b.shape[1] != r:
        raise ValueError(f"lora_b must be [N, r] with r = {r}, got {shape_str(lora_b.shape)}")
    _expect("h", h, (_pera_ref.num_pairs(r, mode),), f"[|P|] for r = {r}, mode {mode!r}")
    for name, t in (("lora_b", lora_b), ("h", h)):
        if t.dtype != lora_a.dtype:
            raise TypeError(f"{name} must have lora_a's dtype {lora_a.dtype}, got {t.dtype}")
        if t.device != lora_a.device:
            raise ValueError(f"{name} must be on lora_a's device {lora_a.device}, got {t.device}")


def pera_adapter(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    h: torch.Tensor,
    scale: float = 1.0,
    mode: str = "full",
) -> torch.Tensor:
    """The PERA adapter term ``s·(x·Âᵀ)·B̂ᵀ`` (DESIGN §3.4), x [..., K] → [..., N].

    Â = [A ; h_p·(a_i ⊙ a_j)] and B̂ = [B , b_i ⊙ b_j] over the pairs p = (i, j) of ``mode`` in
    ``torch.triu_indices(r, r)`` order: ``full`` (i ≤ j, |h| = r(r+1)/2), ``square`` (i = j, |h| = r) or
    ``cross`` (i < j, |h| = r(r-1)/2). A [r, K], B [N, r], h [|h|]. With h = 0 this is exactly LoRA's s·(x·Aᵀ)·Bᵀ.
    Differentiable in x, A, B and h. Under ``torch.autocast`` the inputs are cast to the autocast dtype."""
    x, lora_a, lora_b, h = _autocast(x.device, x, lora_a, lora_b, h)
    _check_pera_factors(lora_a, lora_b, h, mode)
    check_float("x", x)
    if x.dim() < 1 or x.shape[-1] != lora_a.shape[1]:
        raise ValueError(f"x must be [..., K] with K = {lora_a.shape[1]}, got {shape_str(x.shape)}")
    if x.dtype != lora_a.dtype:
        raise TypeError(f"x must have lora_a's dtype {lora_a.dtype}, got {x.dtype}")
    if x.device != lora_a.device:
        raise ValueError(f"x must be on lora_a's device {lora_a.device}, got {x.device}")
    return _pera_ops.pera_adapter(x, lora_a, lora_b, h, float(scale), mode)[0]


def pera_delta_weight(
    lora_a: torch.Tensor, lora_b: torch.Tensor, h: torch.Tensor, scale: float = 1.0, mode: str = "full"
) -> torch.Tensor:
    """ΔW = s·B̂·Â [N, K]: the PERA update as a dense weight, for merging (inference then costs nothing)."""
    _check_pera_factors(lora_a, lora_b, h, mode)
    return _pera_ops.pera_delta_weight(lora_a, lora_b, h, float(scale), mode)


def _stacked(values: torch.Tensor, errors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """values [(L,) P, C, N] and errors [(L,) P, N], checked, as [L, P, C, N] and [L, P, N]."""
    check_float("values", values)
    check_float("errors", errors)
    if values.dim() not in (3, 4):
        raise ValueError(f"values must be [P, C, N] or [L, P, C, N], got shape {shape_str(values.shape)}")
    batched = values.dim() == 4
    expected = (*values.shape[: values.dim() - 2], values.shape[-1])  # [(L,) P, N]
    if tuple(errors.shape) != expected:
        dims = "[L, P, N]" if batched else "[P, N]"
        raise ValueError(f"errors must be {dims} = {shape_str(expected)} for values {shape_str(values.shape)}, "
                         f"got {shape_str(errors.shape)}")  # fmt: skip
    if errors.dtype != values.dtype:
        raise TypeError(f"errors must have values' dtype {values.dtype}, got {errors.dtype}")
    if errors.device != values.device:
        raise ValueError(f"errors must be on values' device {values.device}, got {errors.device}")
    if values.shape[-3] == 0:
        raise ValueError("values must hold at least one token (P > 0)")
    if not batched:
        values, errors = values.unsqueeze(0), errors.unsqueeze(0)
    return values, errors.detach(), batched


def dendrite_correlation(values: torch.Tensor, errors: torch.Tensor, mode: str = "cc") -> torch.Tensor:
    """Per candidate and neuron, the covariance (``"cc"``) or Pearson correlation (``"pearson"``) between the
    candidates' outputs and the neurons' errors over the P tokens of a batch (DESIGN §3.5, Cascade-Correlation).

    values: [(L,) P, C, N] (C candidates per neuron, post-activation); errors: [(L,) P, N] (∂L/∂ neuron output,
    treated as constants). Returns [(L,) C, N] in fp32 (fp64 for fp64 inputs, on the reference backend).
    Computed with a stable reduction (V ≈ 0.5 with a tiny spread, the usual case at initialisation, is exact to
    fp32 rounding); a NaN in one neuron's errors stays in that neuron. Differentiable in values, so
    ``-(score.abs().sum())`` gives candidates their Cascade-Correlation gradient."""
    if mode not in _dendrite_ref.MODES:
        raise ValueError(f"mode must be 'cc' or 'pearson', got {mode!r}")
    values4, errors3, batched = _stacked(values, errors)
    score = _dendrite_ops.dendrite_correlation(values4, errors3, mode)[0]
    return score if batched else score.squeeze(0)
