"""What every op module shares: argument checks, and the allocation and stride helpers of the kernel layer below."""

from __future__ import annotations

import torch

from perfkern import _ext

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


def _pointers(fields: dict) -> dict:
    """Launcher fields with tensors as pointers and None as NULL."""
    return {key: 0 if v is None else v.data_ptr() if isinstance(v, torch.Tensor) else v for key, v in fields.items()}


def launch_core(name: str, device: torch.device, **fields) -> None:
    """Run the core's launcher ``name`` on the current stream of ``device`` (the emulated core's on a CPU tensor);
    tensors are passed as pointers, None as NULL."""
    getattr(_ext.require(), name)(stream=_ext.stream_of(device), device=_ext.device_index(device), **_pointers(fields))


def launch_cpu(name: str, num_threads: int | None = None, **fields) -> None:
    """Run the CPU launcher ``name`` of ``perfkern._C`` on ``num_threads`` (default: torch's thread count); tensors
    are passed as pointers, None as NULL."""
    threads = torch.get_num_threads() if num_threads is None else num_threads
    getattr(_ext.require_cpu(), name)(num_threads=threads, **_pointers(fields))


def core_workspace(query: str, device: torch.device, **fields) -> torch.Tensor:
    """A workspace of the bytes the core's ``query`` asks for with these launcher fields (at least 16 bytes, so its
    pointer is never NULL); ``device=`` and ``stream=`` are not fields of a query."""
    fields = {key: 0 if v is None else v.data_ptr() if isinstance(v, torch.Tensor) else v for key, v in fields.items()}
    nbytes = getattr(_ext.require(), query)(device=_ext.device_index(device), **fields)
    return torch.empty(max(int(nbytes), 16), dtype=torch.uint8, device=device)
