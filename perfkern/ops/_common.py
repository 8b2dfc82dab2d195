"""What every op module shares: output allocation (NaN-poisoned under test) and argument checks."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_poison = False

# Patterns that no kernel writes by accident: NaN for floats, 0xAAAA for integers, 0xAA bytes for bools.
_INT_POISON = {torch.int16: -21846, torch.int32: -1431655766, torch.int64: -6148914691236517206, torch.uint8: 0xAA}


def set_poison(enabled: bool) -> bool:
    """Fill every output perfkern allocates with a poison pattern before kernels run (tests use this so that an
    element a kernel forgets to write fails the comparison). Returns the previous setting."""
    global _poison
    previous, _poison = _poison, enabled
    return previous


def empty(shape: tuple[int, ...] | list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` for op outputs; poisoned when ``set_poison(True)``."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if _poison:
        if dtype.is_floating_point:
            out.fill_(float("nan"))
        elif dtype == torch.bool:
            out.view(torch.uint8).fill_(0xAA)
        else:
            out.fill_(_INT_POISON[dtype])
    return out


def shape_str(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def check_2d(name: str, t: torch.Tensor, dims: str = "[N, K]") -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D {dims}, got shape {shape_str(t.shape)}")


def check_k16(name: str, k: int) -> None:
    if k % 16 != 0:
        raise ValueError(
            f"{name} must be a multiple of 16 (2:4 metadata packs 16 columns per int16), got {k}; "
            "pad with perfkern.sparsity.pad_to_multiple(w, 16)"
        )


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {d}" for name, d in devices.items())
        raise ValueError(f"tensors must be on one device, got {listed}")


def rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` with unit last-dimension stride (other strides free), copying only when needed: a last dimension of
    size 0 or 1 is never stepped along, so its stride does not matter."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def nonempty(t: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """``t``, or ``fallback`` when ``t`` is empty: Triton cannot take an empty tensor's null pointer, and a kernel
    never dereferences a pointer to an empty operand, so any tensor stands in."""
    return t if t.numel() > 0 else fallback
