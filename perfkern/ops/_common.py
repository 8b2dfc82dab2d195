"""What every op module shares: argument checks, and the allocation and stride helpers of the kernel layer below."""

from __future__ import annotations

import torch

# Re-exported: the op modules take every helper from here.
from perfkern.kernels._common import empty as empty
from perfkern.kernels._common import nonempty as nonempty
from perfkern.kernels._common import rows_contiguous as rows_contiguous
from perfkern.kernels._common import set_poison as set_poison

# float64 runs on the reference backend only (perfkern._dispatch sends it there, and the kernels refuse it).
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def shape_str(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


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
