"""Tensor helpers the kernel launchers share: output allocation (NaN-poisoned under test) and stride fixes.

This package is the lowest layer (DESIGN §1): it imports torch and triton, never ``perfkern``; the op layer above
takes these helpers from here."""

from __future__ import annotations

import torch

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
    """``torch.empty`` for op outputs and kernel scratch; poisoned when ``set_poison(True)``."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if _poison:
        if dtype.is_floating_point:
            out.fill_(float("nan"))
        elif dtype == torch.bool:
            out.view(torch.uint8).fill_(0xAA)
        else:
            out.fill_(_INT_POISON[dtype])
    return out


def rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` with unit last-dimension stride (other strides free), copying only when needed: a last dimension of
    size 0 or 1 is never stepped along, so its stride does not matter."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def nonempty(t: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """``t``, or ``fallback`` when ``t`` is empty: Triton cannot take an empty tensor's null pointer, and a kernel
    never dereferences a pointer to an empty operand, so any tensor stands in."""
    return t if t.numel() > 0 else fallback
