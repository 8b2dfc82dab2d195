"""Public functions over the ``perfkern::*`` ops: checked arguments, documented math and shapes."""

from __future__ import annotations

import torch

from perfkern.ops import sparse24 as _ops
from perfkern.ops._common import check_float, check_k16, shape_str

__all__ = ["sparse24_linear"]


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
    - Backward: ``dx = dy·Wbwd + s·(dy·B)·A`` where Wbwd is Ws, or, when ``bwd_values`` [K, N/2] and
      ``bwd_meta`` [K, N/16] are given, the double-pruned copy whose transpose they compress
      (``compress_2to4(Wbwdᵀ)``, 2:4 along N). The gradient of ``values`` holds only the kept entries of
      ``dyᵀ·x`` (compressed form); ``dA = s·(dy·B)ᵀ·x``, ``dB = s·dyᵀ·(x·Aᵀ)``, ``db = Σ dy``.

    All float tensors share x's dtype (float32, float16 or bfloat16); accumulation is fp32.
    """
    check_float("x", x)
    if x.dim() < 1:
        raise ValueError("x must be [..., K], got a scalar")
    k = x.shape[-1]
    check_k16("K (x.shape[-1])", k)
    if values.dim() != 2:
        raise ValueError(f"values must be 2-D [N, K/2], got shape {shape_str(values.shape)}")
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
    if (bwd_values is None) != (bwd_meta is None):
        raise ValueError("bwd_values and bwd_meta must be given together")
    if bwd_values is not None:
        check_k16("N (values.shape[0]) with a backward copy", n)
        _expect("bwd_values", bwd_values, (k, n // 2), "[K, N/2]")
        _expect_dtype("bwd_values", bwd_values, x.dtype)
        if bwd_meta.dtype != torch.int16:
            raise TypeError(f"bwd_meta must be int16, got {bwd_meta.dtype}")
        _expect("bwd_meta", bwd_meta, (k, n // 16), "[K, N/16]")
        tensors.update(bwd_values=bwd_values, bwd_meta=bwd_meta)
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        listed = ", ".join(f"{name} on {t.device}" for name, t in tensors.items())
        raise ValueError(f"tensors must be on one device, got {listed}")
    return _ops.sparse24_linear(x, values, meta, bias, lora_a, lora_b, float(scale), bwd_values, bwd_meta)
